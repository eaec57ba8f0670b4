"""Splits a ``text/event-stream`` body into events, whatever the read boundaries.

The WHATWG event-stream rules, on bytes: lines end in CRLF, LF or CR; a blank line ends
an event; ``data:`` lines are joined with LF; ``event:`` names it; comments and unknown
fields are ignored; a BOM at the very start is skipped.

``raw`` rule: every blank line ends a *unit*, and each unit is returned as an event whose
``raw`` is every byte since the previous unit ended, through this blank line's line end.
Comments, stray blank lines and the BOM therefore ride in the raw of the unit they stand in,
and the raws of all returned events, concatenated, are the input (the bytes of an
unfinished unit come out of ``finish()``). A unit with no ``data:`` line (which the spec
does not dispatch) comes back with name None and empty data: nothing to act on.

A CR that ends a read is a line end whatever follows, so names and data never depend on
the read boundaries. When it ends a blank line, the event is complete but the LF of its
CRLF may still be on its way: if the stream's last CR line end was a CRLF, the event is
held until the next read (or ``finish()``) so its raw takes that LF; in a CR-only stream it
is returned at once rather than one read late. So with LF, CRLF or CR line ends each
event's raw ends with its own line end, however the stream was split; only a stream that
switches from CR to CRLF exactly there puts the LF at the head of the next unit's raw.

Ollama writes each event as one read, ``data: {json}\\n\\n`` (``/v1/responses``:
``event: name\\ndata: {json}\\n\\n``); ``feed`` recognises those with a few byte checks,
before any line scanning, and returns the read itself as the raw.
"""

from __future__ import annotations

from typing import NamedTuple

_BOM = b"\xef\xbb\xbf"
_EVENT_END = b"\n\n"
_DATA_PREFIX = b"data: "
_EVENT_PREFIX = b"event: "
_LF = b"\n"
_CR = b"\r"
_NAME_CACHE_LIMIT = 256


class SSEEvent(NamedTuple):
    """One event: its name (None when absent or empty), its data lines joined, its bytes.

    ``data`` is bytes, not str: the parsers read it with byte checks and ``orjson``, which
    takes bytes, so decoding every event would be spent for nothing.
    """

    name: str | None
    data: bytes
    raw: bytes


_new_event = tuple.__new__  # builds the NamedTuple without its Python-level __new__
_names: dict[bytes, str] = {}  # event names decoded once; a stream reuses a handful


def _name(value: bytes) -> str | None:
    name = _names.get(value)
    if name is None:
        if not value:
            return None  # the spec treats an empty name as no name
        name = value.decode("utf-8", "replace")
        if len(_names) < _NAME_CACHE_LIMIT:
            _names[value] = name
    return name


class SSESplitter:
    """Feeds on reads of one event stream; returns each event as its blank line arrives."""

    __slots__ = (
        "_after_cr",
        "_crlf",
        "_data",
        "_event",
        "_held",
        "_idle",
        "_line",
        "_raw",
        "_start",
    )

    def __init__(self) -> None:
        self._raw: list[bytes] = []  # bytes of the unfinished unit, from earlier reads
        self._line: list[bytes] = []  # pieces of the unfinished line
        self._data: list[bytes] | None = None  # data lines of the unfinished unit
        self._event: bytes | None = None  # its event name
        self._after_cr = False  # the last read ended with a CR: a LF next completes it
        self._crlf = False  # the last CR line end seen was a CRLF
        self._held: SSEEvent | None = None  # complete but for the LF it may still get
        self._start = True  # no line seen yet: the first may begin with a BOM
        self._idle = False  # nothing held: a read that is one whole event needs no scanning

    @property
    def at_boundary(self) -> bool:
        """True when no byte of an unfinished event is held (the next read starts fresh)."""
        return self._idle

    def feed(self, data: bytes) -> list[SSEEvent]:
        """The events this read completed, in order (usually zero or one)."""
        if self._idle and data.endswith(_EVENT_END):
            end = len(data) - 2
            if data.startswith(_DATA_PREFIX):
                if data.find(_LF) == end and data.find(_CR) < 0:
                    return [_new_event(SSEEvent, (None, data[6:end], data))]
            elif data.startswith(_EVENT_PREFIX):
                line_end = data.find(_LF)
                if (
                    data.startswith(_DATA_PREFIX, line_end + 1)
                    and data.find(_LF, line_end + 1) == end
                    and data.find(_CR) < 0  # quicker than "in" for one byte
                ):
                    value = data[7:line_end]
                    name = _names.get(value) or _name(value)
                    return [_new_event(SSEEvent, (name, data[line_end + 7 : end], data))]
        return self._scan(data)

    def finish(self) -> SSEEvent | None:
        """At end of stream: what is held, if anything, else None.

        That is an event held for the LF of its CRLF, or the unfinished unit: the spec
        discards an event without its blank line; it is returned so the caller can decide
        (a last line without a line end counts as a line; data is empty without a
        ``data:`` line).
        """
        held = self._held
        if held is not None:
            self._held = None
            self._after_cr = False
            return held  # nothing came after its CR, so nothing else is held
        if self._line:
            line = b"".join(self._line)
            self._line.clear()
            self._take_line(line)
        self._after_cr = False
        if not self._raw:
            self._data = self._event = None
            return None
        raw = b"".join(self._raw)
        self._raw.clear()
        event = self._unit(raw)
        self._idle = True
        return event

    def _scan(self, data: bytes) -> list[SSEEvent]:
        events: list[SSEEvent] = []
        size = len(data)
        if not size:
            return events
        pos = unit_start = 0
        if self._after_cr:
            self._after_cr = False
            self._crlf = data[0] == 10
            if self._crlf:
                pos = 1  # the LF of a CRLF split across reads
            held = self._held
            if held is not None:
                self._held = None
                if self._crlf:
                    held = _new_event(SSEEvent, (held.name, held.data, held.raw + _LF))
                    unit_start = 1
                events.append(held)
        pieces = self._line
        lf = data.find(_LF, pos)
        cr = data.find(_CR, pos)
        while lf >= 0 or cr >= 0:
            end = cr if lf < 0 or 0 <= cr < lf else lf
            after = end + 1
            if end == cr:
                if after < size:
                    self._crlf = data[after] == 10
                    if self._crlf:
                        after += 1
                else:
                    self._after_cr = True
                cr = data.find(_CR, after)
            if 0 <= lf < after:
                lf = data.find(_LF, after)
            if pieces:
                pieces.append(data[pos:end])
                line = b"".join(pieces)
                pieces.clear()
            else:
                line = data[pos:end]
            pos = after
            if self._start:
                self._start = False
                if line.startswith(_BOM):
                    line = line[3:]
            if line:
                self._take_line(line)
                continue
            raw = data[unit_start:after]
            if self._raw:
                self._raw.append(raw)
                raw = b"".join(self._raw)
                self._raw.clear()
            unit_start = after
            if self._after_cr and self._crlf:
                self._held = self._unit(raw)  # its LF is likely in the next read
            else:
                events.append(self._unit(raw))
        if pos < size:
            pieces.append(data[pos:])
        if unit_start < size:
            self._raw.append(data[unit_start:])
        self._idle = not self._raw and not self._after_cr and not self._start
        return events

    def _take_line(self, line: bytes) -> None:
        if self._start:  # only finish() gets here with the stream's first line
            self._start = False
            if line.startswith(_BOM):
                line = line[3:]
        if line.startswith(b"data"):
            if len(line) == 4:
                value = b""
            elif line[4] == 58:  # ':'
                value = line[6:] if line.startswith(b" ", 5) else line[5:]
            else:
                return  # another field whose name starts with "data"
            if self._data is None:
                self._data = [value]
            else:
                self._data.append(value)
            return
        if line.startswith(b"event"):
            if len(line) == 5:
                self._event = b""
            elif line[5] == 58:
                self._event = line[7:] if line.startswith(b" ", 6) else line[6:]
        # Comments (":...") and other fields (id, retry, unknown) carry nothing for us.

    def _unit(self, raw: bytes) -> SSEEvent:
        lines = self._data
        event = self._event
        self._data = self._event = None
        if lines is None:
            return _new_event(SSEEvent, (None, b"", raw))
        data = lines[0] if len(lines) == 1 else b"\n".join(lines)
        return _new_event(SSEEvent, (None if event is None else _name(event), data, raw))
