"""Takes back out of an event stream what asking for usage on the caller's behalf added.

With ``stream_options.include_usage`` Ollama adds a last chunk whose ``choices`` is empty
and which carries ``usage``; on ``/v1/completions`` it also puts a ``usage`` object on every
chunk. A caller that did not ask for usage must see neither: the first is dropped, the
second rewritten without its ``usage``. Everything else passes as the bytes that arrived,
event by event (a read that ends inside an event is held until the event is whole).
"""

from __future__ import annotations

import re

import orjson

from ._openai import is_usage_only_chunk
from ._sse import SSEEvent, SSESplitter

_USAGE_KEY = b'"usage"'

# A read that is one whole event the way Ollama writes a chat or completions chunk: "data: ",
# JSON that ends with its choices (Go writes "usage" after them, when there is one), the
# blank line, and nothing else. It needs no change: it is neither the usage-only chunk nor
# one that carries usage. Most reads of a stream are such, and one C call tells them.
is_whole_choices_event = re.compile(rb"data: [^\n]*\}\]\}\n\n").fullmatch


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
    __slots__ = ("_every_chunk", "_lf_is_dropped", "_splitter", "idle")

    def __init__(self, kind: str) -> None:
        self._splitter = SSESplitter()
        self._every_chunk = kind == "completion"
        # A dropped event ended with a CR: a LF opening the next raw completes its CRLF.
        self._lf_is_dropped = False
        # Nothing held back: a read for which is_whole_choices_event() holds passes as it
        # is, without the splitter (the transport checks both itself, to save a call).
        self.idle = True

    def feed(self, data: bytes) -> bytes:
        """The bytes the caller gets for this read (possibly none yet)."""
        if self.idle and is_whole_choices_event(data) is not None:
            return data  # the common case, as Ollama sends it
        events = self._splitter.feed(data)
        kept = b"".join(self._keep(event.raw, event) for event in events)
        self.idle = self._splitter.at_boundary and not self._lf_is_dropped
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
