"""Attributing calls: `usage_metadata=` on a call, and `with usage_metadata(...)` blocks.

1. One chat call with every metadata field: who the call was for (subscriber, with the
   credential they used), the organization, subscription and product, the agent, the task
   and conversation (trace) it belongs to, and a quality score for the answer.
2. A `with usage_metadata(...)` block: every call inside it carries the block's fields;
   a call's own `usage_metadata=` wins over the block, field by field.

Metadata only goes into the metering record: it is never sent to Ollama.

Needs Ollama (`ollama serve`, then `ollama pull qwen2.5:0.5b`) at OLLAMA_HOST, and
REVENIUM_METERING_API_KEY in the environment or a .env file.

    python examples/example_metadata.py
"""

from __future__ import annotations

import os
import sys
from typing import Any

try:
    from dotenv import load_dotenv
except ImportError:  # python-dotenv is optional: plain environment variables work too
    pass
else:
    load_dotenv()

import ollama

import revenium_ollama_transport
from revenium_ollama_transport import usage_metadata

MODEL = os.environ.get("OLLAMA_MODEL", "").strip() or "qwen2.5:0.5b"
HOST = os.environ.get("OLLAMA_HOST", "").strip() or "http://127.0.0.1:11434"

# Every field is optional; each one adds a dimension to Revenium's reports.
FULL_METADATA: dict[str, Any] = {
    "trace_id": "conv-28a7e9d4",  # groups the calls of one conversation or session
    "task_type": "summarize-customer-issue",  # the kind of work
    "subscriber": {  # who the call was for
        "id": "subscriberid-1234567890",
        "email": "user@example.com",
        "credential": {  # the API key they used: an alias, and its value
            "name": "engineering-api-key",
            "value": "sk-1234567890abcdef",
        },
    },
    "organization_id": "acme-corp",  # the customer or business unit
    "subscription_id": "startup-plan-Q1",  # their billing plan
    "product_id": "saas-app-gold-tier",  # your product or feature making the call
    "agent": "support-agent",  # the AI agent making the call
    "response_quality_score": 0.95,  # 0.0 to 1.0, e.g. from human feedback or an evaluator
}


def transaction_id(response: object) -> str:
    """The `transactionId` of the response's metering record."""
    return str(getattr(response, "_revenium_transaction_id", "(not metered)"))


def per_call() -> None:
    print("--- 1. usage_metadata= on one call, every field ---")
    # ollama's own type hints do not know the usage_metadata= keyword, hence the ignore;
    # in typed code a `with usage_metadata(...)` block (below) says the same thing.
    response = ollama.chat(  # type: ignore[call-overload]
        model=MODEL,
        messages=[{"role": "user", "content": "Summarise: my invoice was charged twice."}],
        usage_metadata=FULL_METADATA,
    )
    print(response.message.content)
    print(f"  transaction id: {transaction_id(response)}")
    for key, value in FULL_METADATA.items():
        shown = "***" if key == "subscriber" else value  # the credential value is a secret
        print(f"  {key}: {shown}")


def in_a_block() -> None:
    print("--- 2. a `with usage_metadata(...)` block around several calls ---")
    block = {
        "trace_id": "conv-5f21c0aa",
        "organization_id": "globex",
        "product_id": "helpdesk",
        "subscriber": {"id": "u-42", "email": "sam@globex.example"},
        "agent": "triage-agent",
    }
    with usage_metadata(block):
        first = ollama.chat(
            model=MODEL,
            messages=[{"role": "user", "content": "Classify: 'the app crashes on login'."}],
        )
        print(f"classify (block's fields): {first.message.content}")
        print(f"  transaction id: {transaction_id(first)}")

        # Nested blocks merge, the inner one winning field by field.
        with usage_metadata(task_type="draft-reply", agent="writer-agent"):
            second = ollama.generate(model=MODEL, prompt="Draft a two-line apology.")
        print(f"draft (block + task_type, agent=writer-agent): {second.response}")
        print(f"  transaction id: {transaction_id(second)}")

        # A call's own usage_metadata= wins over every block.
        third = ollama.chat(  # type: ignore[call-overload]
            model=MODEL,
            messages=[{"role": "user", "content": "Rate the reply from 0 to 1."}],
            usage_metadata={"task_type": "rate-reply", "response_quality_score": 0.8},
        )
        print(f"rate (block + task_type, score): {third.message.content}")
        print(f"  transaction id: {transaction_id(third)}")


def main() -> int:
    try:
        per_call()
        in_a_block()
    except ConnectionError:
        print(
            f"No Ollama answered at {HOST}. Start it with `ollama serve` "
            f"(then `ollama pull {MODEL}`), or set OLLAMA_HOST.",
            file=sys.stderr,
        )
        return 1
    except ollama.ResponseError as exc:
        print(
            f"Ollama refused the call: {exc.error} (pull the model: `ollama pull {MODEL}`)",
            file=sys.stderr,
        )
        return 1
    finally:
        # Records are delivered in the background; flush before a short script exits.
        revenium_ollama_transport.flush()
    print(f"metering: {revenium_ollama_transport.stats()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
