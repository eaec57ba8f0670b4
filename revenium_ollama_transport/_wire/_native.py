"""Facts from Ollama's native API bodies: NDJSON streams and single JSON objects.

Cost on the caller's path is the point of this module's shape. Ollama's Go structs
serialise ``done`` last on an intermediate chunk, after the message (or response text),
whose fields end with ``tool_calls`` when there are any; and each chunk arrives as one
read. So a read that holds one line ending in ``"},"done":false}`` (chat: the message's
last field is text, so no tool calls) or ``","done":false}`` (generate) is counted with
two byte checks and no JSON parsing. Only the first token-carrying chunk (for the time to first
token) and intermediate chunks in another field order are parsed at once; every other
line (the final chunk, an error, a non-streamed body) is kept and parsed by ``resolve()``
in the delivery thread.
"""

from __future__ import annotations

from typing import Any

import orjson

_CHAT_CHUNK_TAIL = b'"},"done":false}\n'
_GENERATE_CHUNK_TAIL = b'","done":false}\n'
_CHUNK_TAILS = (_CHAT_CHUNK_TAIL, _GENERATE_CHUNK_TAIL)
_LINE_TAIL = b'"done":false}'
_NOT_DONE = b'"done":false'
_TOOL_CALLS_KEY = b'"tool_calls"'


def _carries_token(obj: dict[str, Any]) -> bool:
    message = obj.get("message")
    if isinstance(message, dict):
        return bool(message.get("content") or message.get("thinking") or message.get("tool_calls"))
    return bool(obj.get("response") or obj.get("thinking"))


def _has_tool_calls(obj: dict[str, Any]) -> bool:
    message = obj.get("message")
    return isinstance(message, dict) and bool(message.get("tool_calls"))


def error_message(obj: object) -> str | None:
    """The message of an ``{"error": ...}`` object (Ollama's or OpenAI's shape), or None."""
    if not isinstance(obj, dict) or "error" not in obj:
        return None
    error = obj["error"]
    if isinstance(error, str):
        return error
    if isinstance(error, dict):
        message = error.get("message")
        if isinstance(message, str):
            return message
    return orjson.dumps(error).decode()


class NativeParser:
    """Consumes the bytes of one native response, split anywhere; exposes what they said.

    ``feed`` returns True exactly once: for the read that completed the first chunk
    carrying a token (content, thinking, response text or tool calls).
    """

    __slots__ = (
        "_fast",
        "_first_token_now",
        "_kept",
        "_pending",
        "error",
        "final",
        "first_token_seen",
        "malformed_lines",
        "token_chunks",
        "tool_calls",
    )

    def __init__(self) -> None:
        self._pending: list[bytes] = []
        self._kept: list[bytes] = []
        self._first_token_now = False
        self._fast = False  # first token seen and no unfinished line: the cheap path applies
        self.token_chunks = 0
        self.first_token_seen = False
        self.tool_calls = False
        self.final: dict[str, Any] | None = None
        self.error: str | None = None
        self.malformed_lines = 0

    def feed(
        self, data: bytes, _tails: tuple[bytes, bytes] = _CHUNK_TAILS, _newline: bytes = b"\n"
    ) -> bool:
        # The constant is a default argument, and the two conditions one flag, because
        # this runs for every streamed chunk: each lookup saved is a few percent of it.
        if self._fast and data.endswith(_tails) and data.find(_newline) == len(data) - 1:
            self.token_chunks += 1  # the common case: one whole intermediate chunk
            return False
        self._split(data)
        self._fast = self.first_token_seen and not self._pending
        if self._first_token_now:
            self._first_token_now = False
            return True
        return False

    def finish(self) -> bool:
        """Takes a last line that had no newline (a non-streamed body is one)."""
        if self._pending:
            line = b"".join(self._pending)
            self._pending.clear()
            self._line(line)
        if self._first_token_now:
            self._first_token_now = False
            return True
        return False

    def resolve(self) -> None:
        """Parses the lines ``feed`` kept for later. Call after the body ended."""
        kept, self._kept = self._kept, []
        for line in kept:
            self._classify(line)

    def _split(self, data: bytes) -> None:
        # Pieces of an unfinished line are joined once, so a body arriving in many reads
        # costs O(n), not O(n^2).
        newline = data.find(b"\n")
        if newline < 0:
            if data:
                self._pending.append(data)
            return
        if self._pending:
            self._pending.append(data[:newline])
            line = b"".join(self._pending)
            self._pending.clear()
        else:
            line = data[:newline]
        self._line(line)
        start = newline + 1
        newline = data.find(b"\n", start)
        while newline >= 0:
            self._line(data[start:newline])
            start = newline + 1
            newline = data.find(b"\n", start)
        if start < len(data):
            self._pending.append(data[start:])

    def _line(self, line: bytes) -> None:
        if line.endswith(_LINE_TAIL):
            if self.first_token_seen and line.find(_TOOL_CALLS_KEY) < 0:  # find: see below
                self.token_chunks += 1
                return
            self._classify(line)
            return
        line = line.strip()
        if not line:
            return
        # find, not "in": bytes' "in" first tries the operand as an int, and raises
        if line.find(_NOT_DONE) >= 0:
            self._classify(line)  # an intermediate chunk with its fields in another order
        else:
            self._kept.append(line)

    def _classify(self, line: bytes) -> None:
        try:
            obj = orjson.loads(line)
        except orjson.JSONDecodeError:
            self.malformed_lines += 1
            return
        if not isinstance(obj, dict):
            self.malformed_lines += 1
            return
        message = error_message(obj)
        if message is not None:
            if self.error is None:
                self.error = message
            return
        if obj.get("done") is False:
            self.token_chunks += 1
            if not self.first_token_seen and _carries_token(obj):
                self.first_token_seen = True
                self._first_token_now = True
            if not self.tool_calls and _has_tool_calls(obj):
                self.tool_calls = True
            return
        # The final chunk, or a whole non-streamed body.
        self.final = obj
        if not self.tool_calls and _has_tool_calls(obj):
            self.tool_calls = True
