"""Usage metadata: where it comes from, which keys exist, and how each maps to the wire.

Metadata comes in layers, the later winning field by field: environment variables (trace
fields only), ``with usage_metadata(...)`` blocks (outermost first), the
``X-Revenium-Metadata`` header of one request, and a call's own ``usage_metadata=``. The
caller's path only stacks references; names, types and caps are checked by ``resolve`` in
the delivery thread, before the record is sent, so a bad value costs one warning and that
field, never the call or the record. With ``REVENIUM_STRICT_METADATA=true`` the same
checks run at the call (``check``) and raise ``ValueError`` instead.
"""

from __future__ import annotations

import logging
import math
import os
import re
import threading
from collections.abc import Callable, Iterable, Mapping
from contextvars import ContextVar, Token
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import orjson

logger = logging.getLogger("revenium_ollama_transport")

Layers = tuple[Mapping[str, Any], ...]

_layers: ContextVar[Layers] = ContextVar("revenium_usage_metadata", default=())


# The metadata blocks enclosing the caller, outermost first: a C call, no Python frame.
current_layers: Callable[[], Layers] = _layers.get


def push(layer: Mapping[str, Any]) -> Token[Layers]:
    """Adds an innermost layer for the current context; undo with ``pop``."""
    return _layers.set((*_layers.get(), layer))


def pop(token: Token[Layers]) -> None:
    _layers.reset(token)


class usage_metadata:
    """Attaches metadata to every metered call made inside the block.

    Works with ``with`` and ``async with``; follows threads' and asyncio tasks' own
    contexts, so concurrent callers never see each other's values. Nested blocks merge,
    the inner value winning field by field.
    """

    __slots__ = ("_metadata", "_tokens")

    def __init__(self, metadata: Mapping[str, Any] | None = None, /, **fields: Any) -> None:
        merged: dict[str, Any] = dict(as_layer(metadata) or {})
        merged.update(fields)
        check(merged)
        self._metadata = merged
        self._tokens: list[Token[Layers]] = []

    def __enter__(self) -> usage_metadata:
        self._tokens.append(_layers.set((*_layers.get(), self._metadata)))
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        _layers.reset(self._tokens.pop())

    async def __aenter__(self) -> usage_metadata:
        return self.__enter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.__exit__(exc_type, exc, tb)


# --- the key table -------------------------------------------------------------------

_TEXT, _SCORE, _COUNT = "text", "score", "count"


@dataclass(frozen=True)
class _Field:
    wire: str
    kind: str = _TEXT
    cap: int = 255
    pattern: re.Pattern[str] | None = None


_TRACE_TYPE = re.compile(r"[A-Za-z0-9_-]{1,128}")

# Canonical snake-case key -> wire field. Subscriber keys are handled apart (nested).
_FIELDS: dict[str, _Field] = {
    "trace_id": _Field("traceId"),
    "task_type": _Field("taskType"),
    "organization_name": _Field("organizationName"),
    "product_name": _Field("productName", cap=224),
    "subscription_id": _Field("subscriptionId"),
    "agent": _Field("agent"),
    "response_quality_score": _Field("responseQualityScore", kind=_SCORE),
    "environment": _Field("environment"),
    "region": _Field("region"),
    "credential_alias": _Field("credentialAlias"),
    "trace_type": _Field("traceType", cap=128, pattern=_TRACE_TYPE),
    "trace_name": _Field("traceName", cap=256),
    "parent_transaction_id": _Field("parentTransactionId"),
    "transaction_name": _Field("transactionName"),
    "retry_number": _Field("retryNumber", kind=_COUNT),
}

# Every accepted spelling -> canonical key: snake case, the wire's camelCase, legacy names.
_ALIASES: dict[str, str] = {key: key for key in _FIELDS}
_ALIASES.update({field.wire: key for key, field in _FIELDS.items()})
_ALIASES.update(
    {
        "organization_id": "organization_name",
        "organizationId": "organization_name",
        "product_id": "product_name",
        "productId": "product_name",
    }
)

# Flat spellings of the nested subscriber object: key -> path inside "subscriber".
_SUBSCRIBER_FLAT: dict[str, tuple[str, ...]] = {
    "subscriber_id": ("id",),
    "subscriberId": ("id",),
    "subscriber_email": ("email",),
    "subscriberEmail": ("email",),
    "subscriber_credential_name": ("credential", "name"),
    "subscriberCredentialName": ("credential", "name"),
    "subscriber_credential": ("credential", "value"),
    "subscriberCredential": ("credential", "value"),
}
_SUBSCRIBER_CAP = 255

ACCEPTED_KEYS: tuple[str, ...] = (
    *_FIELDS,
    "subscriber",
    *_SUBSCRIBER_FLAT,
    "organization_id",
    "product_id",
)

_warned: set[tuple[str, ...]] = set()
_warned_lock = threading.Lock()


def _warn_once(key: tuple[str, ...], message: str, *args: object) -> None:
    with _warned_lock:
        if key in _warned:
            return
        _warned.add(key)
    logger.warning(message, *args)


def strict() -> bool:
    """``REVENIUM_STRICT_METADATA``: problems raise at the call instead of being warned."""
    return os.environ.get("REVENIUM_STRICT_METADATA", "").strip().lower() in ("1", "true", "yes")


class MetadataError(ValueError):
    """A metadata problem, raised at the call in strict mode (``REVENIUM_STRICT_METADATA``)."""


class _Problems:
    """Where problems go: warned once each (the default), or collected for strict mode."""

    def __init__(self, collect: bool = False) -> None:
        self.found: list[str] | None = [] if collect else None

    def __call__(self, field: str, what: str, message: str, *args: object) -> None:
        if self.found is not None:
            self.found.append(f"field {field!r} " + message % args)
        else:
            _warn_once((field, what), "usage_metadata field %r " + message, field, *args)


_WARN = _Problems()


def as_layer(metadata: object) -> Mapping[str, Any] | None:
    """``metadata`` if it is a mapping; otherwise None, after a warning (or, in strict
    mode, a ``ValueError``)."""
    if metadata is None or isinstance(metadata, Mapping):
        return metadata
    message = f"usage_metadata must be a mapping, got {type(metadata).__name__}"
    if strict():
        raise MetadataError(message)
    _warn_once(("not-a-mapping", type(metadata).__name__), "%s; ignored", message)
    return None


def check(layer: Mapping[str, Any]) -> None:
    """In strict mode, raises ``MetadataError`` naming every problem of ``layer``."""
    if not layer or not strict():
        return
    problems = _Problems(collect=True)
    normalise(layer, problems)
    if problems.found:
        raise MetadataError("usage_metadata: " + "; ".join(problems.found))


def header_layer(raw: str) -> dict[str, Any]:
    """The ``X-Revenium-Metadata`` header as a layer: a JSON object, else nothing (warned,
    or raised in strict mode)."""
    try:
        parsed = orjson.loads(raw)
    except orjson.JSONDecodeError:
        parsed = None
        problem = "is not valid JSON"
    else:
        problem = "must be a JSON object"
    if isinstance(parsed, dict):
        return parsed
    if strict():
        raise MetadataError(f"X-Revenium-Metadata header {problem}")
    _warn_once(("header", problem), "X-Revenium-Metadata header %s; ignored", problem)
    return {}


def _text(
    name: str, value: object, cap: int, pattern: re.Pattern[str] | None, problem: _Problems
) -> str | None:
    if not isinstance(value, str):
        problem(name, "type", "must be a string, got %s; field dropped", type(value).__name__)
        return None
    if pattern is not None and not pattern.fullmatch(value):
        problem(name, "pattern", "must match %s; field dropped", pattern.pattern)
        return None
    if len(value) > cap:
        problem(name, "cap", "is longer than %d characters; cut to that length", cap)
        return value[:cap]
    return value


def _value(name: str, field: _Field, value: object, problem: _Problems) -> object | None:
    if field.kind == _TEXT:
        return _text(name, value, field.cap, field.pattern, problem)
    if field.kind == _SCORE:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            problem(name, "type", "must be a number, got %s; field dropped", type(value).__name__)
            return None
        if not math.isfinite(value) or not 0.0 <= value <= 1.0:
            problem(name, "range", "must be a finite number from 0.0 to 1.0; field dropped")
            return None
        return float(value)
    # _COUNT
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        problem(name, "type", "must be a non-negative integer; field dropped")
        return None
    return value


def _subscriber_part(
    path: tuple[str, ...], value: object, into: dict[str, Any], problem: _Problems
) -> None:
    name = "subscriber." + ".".join(path)
    text = _text(name, value, _SUBSCRIBER_CAP, None, problem)
    if text is None:
        return
    if len(path) == 1:
        into[path[0]] = text
    else:
        into.setdefault("credential", {})[path[1]] = text


def _subscriber(value: object, into: dict[str, Any], problem: _Problems) -> None:
    if not isinstance(value, Mapping):
        problem(
            "subscriber", "type", "must be a mapping, got %s; field dropped", type(value).__name__
        )
        return
    for key, part in value.items():
        if key in ("id", "email"):
            _subscriber_part((key,), part, into, problem)
        elif key == "credential":
            if not isinstance(part, Mapping):
                problem("subscriber.credential", "type", "must be a mapping; field dropped")
                continue
            for cred_key, cred_value in part.items():
                if cred_key in ("name", "value"):
                    _subscriber_part(("credential", cred_key), cred_value, into, problem)
                else:
                    problem(
                        f"subscriber.credential.{cred_key}",
                        "unknown",
                        "is not a known key (name, value); ignored",
                    )
        else:
            problem(
                f"subscriber.{key}",
                "unknown",
                "is not a known key (id, email, credential); ignored",
            )


def normalise(layer: Mapping[str, Any], problem: _Problems = _WARN) -> dict[str, Any]:
    """One layer of user metadata as wire fields; problems are reported and dropped."""
    out: dict[str, Any] = {}
    subscriber: dict[str, Any] = {}
    for key, value in layer.items():
        if value is None:
            continue
        canonical = _ALIASES.get(key)
        if canonical is not None:
            field = _FIELDS[canonical]
            checked = _value(str(key), field, value, problem)
            if checked is not None:
                out[field.wire] = checked
        elif key == "subscriber":
            _subscriber(value, subscriber, problem)
        elif key in _SUBSCRIBER_FLAT:
            _subscriber_part(_SUBSCRIBER_FLAT[key], value, subscriber, problem)
        elif problem.found is not None:
            problem.found.append(f"key {key!r} is not known (accepted: {', '.join(ACCEPTED_KEYS)})")
        else:
            _warn_once(
                ("unknown", str(key)),
                "usage_metadata key %r is not known; ignored. Accepted keys: %s",
                key,
                ", ".join(ACCEPTED_KEYS),
            )
    if subscriber:
        out["subscriber"] = subscriber
    return out


# Trace fields a deployment can set once, in the environment: first variable set wins.
_ENVIRONMENT: dict[str, tuple[str, ...]] = {
    "environment": ("REVENIUM_ENVIRONMENT", "ENVIRONMENT", "DEPLOYMENT_ENV"),
    "region": (
        "REVENIUM_REGION",
        "AWS_REGION",
        "AWS_DEFAULT_REGION",
        "AZURE_REGION",
        "GCP_REGION",
        "GOOGLE_CLOUD_REGION",
    ),
    "credential_alias": ("REVENIUM_CREDENTIAL_ALIAS",),
    "trace_type": ("REVENIUM_TRACE_TYPE",),
    "trace_name": ("REVENIUM_TRACE_NAME",),
    "parent_transaction_id": ("REVENIUM_PARENT_TRANSACTION_ID",),
    "transaction_name": ("REVENIUM_TRANSACTION_NAME",),
    "retry_number": ("REVENIUM_RETRY_NUMBER",),
}


def environment_layer() -> dict[str, Any]:
    """The trace fields set in the environment, as a metadata layer."""
    layer: dict[str, Any] = {}
    environ = os.environ
    for key, names in _ENVIRONMENT.items():
        for name in names:
            value = environ.get(name, "").strip()
            if value:
                if _FIELDS[key].kind == _COUNT:
                    layer[key] = int(value) if value.isdigit() else value  # a bad one is warned
                else:
                    layer[key] = value
                break
    return layer


def _merge_subscriber(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    merged = {**base, **top}
    if "credential" in base and "credential" in top:
        merged["credential"] = {**base["credential"], **top["credential"]}
    return merged


def resolve(layers: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Merges layers given outermost first; an inner layer wins field by field."""
    out: dict[str, Any] = {}
    for layer in layers:
        fields = normalise(layer)
        subscriber = fields.pop("subscriber", None)
        out.update(fields)
        if subscriber is not None:
            previous = out.get("subscriber")
            out["subscriber"] = (
                subscriber if previous is None else _merge_subscriber(previous, subscriber)
            )
    return out
