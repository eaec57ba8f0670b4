"""Usage metadata: where it comes from, which keys exist, and how each maps to the wire.

Callers attach metadata in layers (outermost first): ``with usage_metadata(...)`` blocks,
then the ``X-Revenium-Metadata`` header of one request. The caller's path only stacks
references; names, types and caps are checked by ``resolve`` in the delivery thread, so
a bad value costs one warning and that field, never the call or the record.
"""

from __future__ import annotations

import logging
import math
import re
import threading
from collections.abc import Iterable, Mapping
from contextvars import ContextVar, Token
from dataclasses import dataclass
from types import TracebackType
from typing import Any

logger = logging.getLogger("revenium_ollama_transport")

Layers = tuple[Mapping[str, Any], ...]

_layers: ContextVar[Layers] = ContextVar("revenium_usage_metadata", default=())


def current_layers() -> Layers:
    """The metadata blocks enclosing the caller, outermost first (cheap: one lookup)."""
    return _layers.get()


class usage_metadata:
    """Attaches metadata to every metered call made inside the block.

    Works with ``with`` and ``async with``; follows threads' and asyncio tasks' own
    contexts, so concurrent callers never see each other's values. Nested blocks merge,
    the inner value winning field by field.
    """

    __slots__ = ("_metadata", "_tokens")

    def __init__(self, metadata: Mapping[str, Any] | None = None, /, **fields: Any) -> None:
        merged: dict[str, Any] = dict(metadata) if isinstance(metadata, Mapping) else {}
        if metadata is not None and not isinstance(metadata, Mapping):
            _warn_once(
                ("not-a-mapping",),
                "usage_metadata must be a mapping; got %s, ignored",
                type(metadata).__name__,
            )
        merged.update(fields)
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


def _problem(field: str, what: str, message: str, *args: object) -> None:
    _warn_once((field, what), "usage_metadata field %r " + message, field, *args)


def _text(name: str, value: object, cap: int, pattern: re.Pattern[str] | None) -> str | None:
    if not isinstance(value, str):
        _problem(name, "type", "must be a string, got %s; field dropped", type(value).__name__)
        return None
    if pattern is not None and not pattern.fullmatch(value):
        _problem(name, "pattern", "must match %s; field dropped", pattern.pattern)
        return None
    if len(value) > cap:
        _problem(name, "cap", "is longer than %d characters; cut to that length", cap)
        return value[:cap]
    return value


def _value(name: str, field: _Field, value: object) -> object | None:
    if field.kind == _TEXT:
        return _text(name, value, field.cap, field.pattern)
    if field.kind == _SCORE:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            _problem(name, "type", "must be a number, got %s; field dropped", type(value).__name__)
            return None
        if not math.isfinite(value) or not 0.0 <= value <= 1.0:
            _problem(name, "range", "must be a finite number from 0.0 to 1.0; field dropped")
            return None
        return float(value)
    # _COUNT
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        _problem(name, "type", "must be a non-negative integer; field dropped")
        return None
    return value


def _subscriber_part(path: tuple[str, ...], value: object, into: dict[str, Any]) -> None:
    name = "subscriber." + ".".join(path)
    text = _text(name, value, _SUBSCRIBER_CAP, None)
    if text is None:
        return
    if len(path) == 1:
        into[path[0]] = text
    else:
        into.setdefault("credential", {})[path[1]] = text


def _subscriber(value: object, into: dict[str, Any]) -> None:
    if not isinstance(value, Mapping):
        _problem(
            "subscriber", "type", "must be a mapping, got %s; field dropped", type(value).__name__
        )
        return
    for key, part in value.items():
        if key in ("id", "email"):
            _subscriber_part((key,), part, into)
        elif key == "credential":
            if not isinstance(part, Mapping):
                _problem("subscriber.credential", "type", "must be a mapping; field dropped")
                continue
            for cred_key, cred_value in part.items():
                if cred_key in ("name", "value"):
                    _subscriber_part(("credential", cred_key), cred_value, into)
                else:
                    _problem(
                        f"subscriber.credential.{cred_key}",
                        "unknown",
                        "is not a known key (name, value); ignored",
                    )
        else:
            _problem(
                f"subscriber.{key}",
                "unknown",
                "is not a known key (id, email, credential); ignored",
            )


def normalise(layer: Mapping[str, Any]) -> dict[str, Any]:
    """One layer of user metadata as wire fields; problems are warned about and dropped."""
    out: dict[str, Any] = {}
    subscriber: dict[str, Any] = {}
    for key, value in layer.items():
        if value is None:
            continue
        canonical = _ALIASES.get(key)
        if canonical is not None:
            field = _FIELDS[canonical]
            checked = _value(str(key), field, value)
            if checked is not None:
                out[field.wire] = checked
        elif key == "subscriber":
            _subscriber(value, subscriber)
        elif key in _SUBSCRIBER_FLAT:
            _subscriber_part(_SUBSCRIBER_FLAT[key], value, subscriber)
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
