"""Go's JSON and timestamp formats, so simulated bodies match Ollama's byte for byte."""

from __future__ import annotations

import calendar
import re
import time
from typing import Any

import orjson

# encoding/json escapes these inside strings; they never occur outside strings in JSON text.
_GO_ESCAPES = (
    (b"<", b"\\u003c"),
    (b">", b"\\u003e"),
    (b"&", b"\\u0026"),
    ("\u2028".encode(), b"\\u2028"),
    ("\u2029".encode(), b"\\u2029"),
)
_RFC3339 = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(?:\.\d{1,9})?(Z|([+-])(\d{2}):(\d{2}))"
)


class GoRaw:
    """A `json.RawMessage`: written as given, its keys never re-sorted by `go_map`."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value


def _unwrap(value: Any) -> Any:
    if isinstance(value, GoRaw):
        return value.value
    raise TypeError(f"cannot encode {type(value).__name__}")


def go_json(value: object) -> bytes:
    """`json.Marshal`: compact, keys in insertion (struct) order, HTML characters escaped."""
    data = orjson.dumps(value, default=_unwrap)
    for raw, escaped in _GO_ESCAPES:
        if raw in data:
            data = data.replace(raw, escaped)
    return data


def go_map(value: Any) -> Any:
    """A value built from Go `map[string]any`s: `json.Marshal` sorts map keys, recursively."""
    if isinstance(value, dict):
        return {key: go_map(value[key]) for key in sorted(value)}
    if isinstance(value, list):
        return [go_map(item) for item in value]
    return value


def go_float(value: float) -> float | int:
    """A float64 as `json.Marshal` prints it: integral values have no `.0` (1.0 is `1`)."""
    if value.is_integer() and abs(value) < 1e21:
        return int(value)
    return value


def go_time(ns: int | None = None) -> str:
    """A UTC `time.Time` as Go marshals it: RFC 3339, nanoseconds with trailing zeros cut."""
    if ns is None:
        ns = time.time_ns()
    seconds, fraction = divmod(ns, 1_000_000_000)
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
    digits = f"{fraction:09d}".rstrip("0")
    return f"{stamp}.{digits}Z" if digits else f"{stamp}Z"


def go_unix(stamp: object) -> int | None:
    """`time.Time.Unix()` of an RFC 3339 timestamp; None when absent or unreadable (zero time)."""
    match = _RFC3339.fullmatch(stamp) if isinstance(stamp, str) else None
    if match is None:
        return None
    year, month, day, hour, minute, second = (int(match.group(i)) for i in range(1, 7))
    seconds = calendar.timegm((year, month, day, hour, minute, second, 0, 0, 0))
    if match.group(7) != "Z":
        offset = int(match.group(9)) * 3600 + int(match.group(10)) * 60
        seconds -= offset if match.group(8) == "+" else -offset
    return seconds
