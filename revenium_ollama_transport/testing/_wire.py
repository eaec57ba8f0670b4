"""Go's JSON and timestamp formats, so simulated bodies match Ollama's byte for byte."""

from __future__ import annotations

import time

import orjson

# encoding/json escapes these inside strings; they never occur outside strings in JSON text.
_GO_ESCAPES = (
    (b"<", b"\\u003c"),
    (b">", b"\\u003e"),
    (b"&", b"\\u0026"),
    ("\u2028".encode(), b"\\u2028"),
    ("\u2029".encode(), b"\\u2029"),
)


def go_json(value: object) -> bytes:
    """`json.Marshal`: compact, keys in insertion (struct) order, HTML characters escaped."""
    data = orjson.dumps(value)
    for raw, escaped in _GO_ESCAPES:
        if raw in data:
            data = data.replace(raw, escaped)
    return data


def go_time(ns: int | None = None) -> str:
    """A UTC `time.Time` as Go marshals it: RFC 3339, nanoseconds with trailing zeros cut."""
    if ns is None:
        ns = time.time_ns()
    seconds, fraction = divmod(ns, 1_000_000_000)
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
    digits = f"{fraction:09d}".rstrip("0")
    return f"{stamp}.{digits}Z" if digits else f"{stamp}Z"
