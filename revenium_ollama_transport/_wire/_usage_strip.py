"""Takes back out of an event stream what asking for usage on the caller's behalf added.

With ``stream_options.include_usage`` Ollama adds a last chunk whose ``choices`` is empty
and which carries ``usage``; on ``/v1/completions`` it also puts a ``usage`` object on every
chunk. A caller that did not ask for usage must see neither: the first is dropped, the
second rewritten without its ``usage``. Everything else passes as the bytes that arrived,
event by event (a read that ends inside an event is held until the event is whole).
"""

from __future__ import annotations

import orjson

from ._openai import is_usage_only_chunk
from ._sse import SSEEvent, SSESplitter

_USAGE_KEY = b'"usage"'


def _without_usage(event: SSEEvent) -> bytes:
    try:
        chunk = orjson.loads(event.data)
    except orjson.JSONDecodeError:
        return event.raw
    if not isinstance(chunk, dict) or "usage" not in chunk:
        return event.raw
    del chunk["usage"]
    return b"data: " + orjson.dumps(chunk) + b"\n\n"


class UsageStripper:
    __slots__ = ("_every_chunk", "_lf_is_dropped", "_splitter", "_whole")

    def __init__(self, kind: str) -> None:
        self._splitter = SSESplitter()
        self._every_chunk = kind == "completion"
        # A dropped event ended with a CR: a LF opening the next raw completes its CRLF.
        self._lf_is_dropped = False
        self._whole = True  # nothing held back: a read may pass without the splitter

    def feed(
        self,
        data: bytes,
        _prefix: bytes = b"data: ",
        _tail: bytes = b"}]}\n\n",
        _newline: bytes = b"\n",
    ) -> bytes:
        """The bytes the caller gets for this read (possibly none yet)."""
        # The common case, as Ollama sends it: one whole event per read, and a chunk that
        # ends with its choices (Go writes "usage" after them, when there is one).
        if (
            self._whole
            and data.startswith(_prefix)
            and data.endswith(_tail)
            and data.find(_newline) == len(data) - 2
        ):
            return data
        events = self._splitter.feed(data)
        self._whole = self._splitter.at_boundary and not self._lf_is_dropped
        kept = b"".join(self._keep(event.raw, event) for event in events)
        self._whole = self._splitter.at_boundary and not self._lf_is_dropped
        return kept

    def finish(self) -> bytes:
        """At the end of the stream: the bytes of an unfinished last event, as they came."""
        event = self._splitter.finish()
        return b"" if event is None else self._keep(event.raw, None)

    def _keep(self, raw: bytes, event: SSEEvent | None) -> bytes:
        # The splitter hands a LF that completes a CRLF split across reads to the next
        # event's raw (see _sse): around a dropped event, it goes with the event it ends.
        if self._lf_is_dropped:
            self._lf_is_dropped = False
            if raw.startswith(b"\n"):
                raw = raw[1:]
        if event is None or event.data.find(_USAGE_KEY) < 0:  # find: quicker than "in"
            return raw
        if is_usage_only_chunk(event.data):
            self._lf_is_dropped = raw.endswith(b"\r")
            return b"\n" if raw.startswith(b"\n") else b""
        return _without_usage(event) if self._every_chunk else raw
