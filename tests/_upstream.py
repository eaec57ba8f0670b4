"""The metadata example of the upstream README, as its users write it."""

from __future__ import annotations

from typing import Any

UPSTREAM_METADATA: dict[str, Any] = {
    "trace_id": "conv-28a7e9d4",
    "task_type": "summarize-customer-issue",
    "subscriber": {
        "id": "subscriberid-1234567890",
        "email": "user@example.com",
        "credential": {"name": "engineering-api-key", "value": "sk-1234567890abcdef"},
    },
    "organization_id": "acme-corp",
    "subscription_id": "startup-plan-Q1",
    "product_id": "saas-app-gold-tier",
    "agent": "support-agent",
}
