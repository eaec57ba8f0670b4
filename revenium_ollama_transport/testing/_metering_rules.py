"""The field rules the Revenium metering API applies to an AI completion record.

From the project's metering-api reference. One deliberate difference: the real server answers
201 and silently drops a record whose text is longer than its column; the fake refuses it with
400, so a client that forgets to truncate is caught in tests instead of losing data unseen.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

_STOP_REASONS = frozenset(
    {
        "END",
        "END_SEQUENCE",
        "TIMEOUT",
        "TOKEN_LIMIT",
        "COST_LIMIT",
        "COMPLETION_LIMIT",
        "ERROR",
        "CANCELLED",
    }
)
_OPERATION_TYPES = frozenset(
    {
        "CHAT",
        "GENERATE",
        "EMBED",
        "CLASSIFY",
        "SUMMARIZE",
        "TRANSLATE",
        "TOOL_CALL",
        "RERANK",
        "SEARCH",
        "MODERATION",
        "VISION",
        "TRANSFORM",
        "GUARDRAIL",
        "AUDIO",
        "VIDEO",
        "IMAGE",
        "OTHER",
    }
)
_ISO_8601 = re.compile(r"(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2})(\.\d{1,9})?(Z|[+-]\d{2}:\d{2})")
_TRACE_TYPE = re.compile(r"[A-Za-z0-9_-]{1,128}")
_TEXT_CAP = 255
_PROMPT_CAP = 50_000

Violation = tuple[str, str]  # (field, message)
_Check = Callable[[str, Any], str | None]


def _text(cap: int = _TEXT_CAP, *, required: bool = False) -> _Check:
    def check(name: str, value: Any) -> str | None:
        if not isinstance(value, str):
            return f"{name} must be a string"
        if required and not value:
            return f"{name} must not be empty"
        if len(value) > cap:
            return f"{name} is {len(value)} characters; the limit is {cap}"
        return None

    return check


def _count(name: str, value: Any) -> str | None:
    if type(value) is not int:  # bool is an int in Python, not in JSON
        return f"{name} must be an integer"
    if value < 0:
        return f"{name} must be >= 0"
    return None


def _integer(name: str, value: Any) -> str | None:
    return None if type(value) is int else f"{name} must be an integer"


def _number(limit: float = math.inf) -> _Check:
    def check(name: str, value: Any) -> str | None:
        if type(value) not in (int, float) or not math.isfinite(value):
            return f"{name} must be a number"
        if abs(value) >= limit:
            return f"{name} must be below {limit:g} in absolute value"
        return None

    return check


def _boolean(name: str, value: Any) -> str | None:
    return None if isinstance(value, bool) else f"{name} must be a boolean"


def _timestamp(name: str, value: Any) -> str | None:
    match = _ISO_8601.fullmatch(value) if isinstance(value, str) else None
    if match is None:
        return f"{name} must be an ISO-8601 timestamp like 2025-01-02T03:04:05.678Z"
    try:
        datetime.strptime(match.group(1), "%Y-%m-%dT%H:%M:%S")
    except ValueError:
        return f"{name} is not a valid date and time"
    return None


def _one_of(allowed: frozenset[str]) -> _Check:
    def check(name: str, value: Any) -> str | None:
        if value in allowed:
            return None
        return f"{name} must be one of {', '.join(sorted(allowed))}"

    return check


def _trace_type(name: str, value: Any) -> str | None:
    if isinstance(value, str) and _TRACE_TYPE.fullmatch(value):
        return None
    return f"{name} must be 1-128 characters of [A-Za-z0-9_-]"


def _subscriber(name: str, value: Any) -> str | None:
    if not isinstance(value, dict):
        return f"{name} must be an object"
    violation = _check_fields(value, _SUBSCRIBER, {}, prefix=f"{name}.")
    return None if violation is None else violation[1]


def _credential(name: str, value: Any) -> str | None:
    if not isinstance(value, dict):
        return f"{name} must be an object"
    violation = _check_fields(value, _CREDENTIAL, {}, prefix=f"{name}.")
    return None if violation is None else violation[1]


_REQUIRED: dict[str, _Check] = {
    "transactionId": _text(required=True),
    "model": _text(required=True),
    "provider": _text(required=True),
    "costType": _text(required=True),
    "inputTokenCount": _count,
    "outputTokenCount": _count,
    "totalTokenCount": _count,
    "isStreamed": _boolean,
    "requestTime": _timestamp,
    "responseTime": _timestamp,
    "completionStartTime": _timestamp,
    "requestDuration": _count,
    "stopReason": _one_of(_STOP_REASONS),
}

_OPTIONAL: dict[str, _Check] = {
    **{
        name: _text()
        for name in (
            "traceId",
            "taskType",
            "agent",
            "organizationName",
            "subscriptionId",
            "environment",
            "region",
            "credentialAlias",
            "parentTransactionId",
            "transactionName",
            "operationSubtype",
            "modelSource",
            "middlewareSource",
            "systemFingerprint",
            "errorReason",
        )
    },
    "productName": _text(224),
    "traceType": _trace_type,
    "traceName": _text(256),
    "subscriber": _subscriber,
    "responseQualityScore": _number(1000),
    "retryNumber": _count,
    "operationType": _one_of(_OPERATION_TYPES),
    "timeToFirstToken": _count,
    "mediationLatency": _count,
    "reasoningTokenCount": _count,
    "cacheReadTokenCount": _count,
    "cacheCreationTokenCount": _count,
    "inputTokenCost": _number(),
    "outputTokenCost": _number(),
    "totalCost": _number(),
    "temperature": _number(),
    "errorCode": _integer,
    "systemPrompt": _text(_PROMPT_CAP),
    "inputMessages": _text(_PROMPT_CAP),
    "outputResponse": _text(_PROMPT_CAP),
    "promptsTruncated": _boolean,
}

_SUBSCRIBER: dict[str, _Check] = {"id": _text(), "email": _text(), "credential": _credential}
_CREDENTIAL: dict[str, _Check] = {"name": _text(), "value": _text()}


def _check_fields(
    record: Mapping[str, Any],
    optional: Mapping[str, _Check],
    required: Mapping[str, _Check],
    *,
    prefix: str = "",
    allow_unknown: bool = False,
) -> Violation | None:
    for name in required:
        if name not in record:
            return prefix + name, f"{prefix}{name} is required"
    for name, value in record.items():
        field = prefix + name
        if value is None:  # the API refuses null; a client must leave the field out
            return field, f"{field} must not be null"
        check = required.get(name) or optional.get(name)
        if check is None:
            if allow_unknown:
                continue
            return field, f"{field} is not a known field"
        message = check(field, value)
        if message is not None:
            return field, message
    return None


def validate_record(record: Any, *, allow_unknown_fields: bool = False) -> Violation | None:
    """The first rule `record` breaks as (field, message), or None when it would be stored."""
    if not isinstance(record, dict):
        return "", "the body must be a JSON object"
    return _check_fields(record, _OPTIONAL, _REQUIRED, allow_unknown=allow_unknown_fields)
