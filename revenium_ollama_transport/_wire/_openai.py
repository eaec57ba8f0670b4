"""Facts from the bodies of Ollama's OpenAI-compatible routes, streamed (SSE) or not.

Cost on the caller's path shapes this module, as it does ``_native.py``. Events are parsed
with ``orjson`` until the first token (its time is measured) and whenever they can carry
something other than a token. A chat or completion token event is recognised without
parsing by its *shape*, learnt from the last parsed event that carried only a token: the
bytes before its token string (``pre``) and after it (``post``). An event that is ``pre`` +
a non-empty valid JSON string body + ``post`` is that same event with another token, so it
is counted and nothing else: no usage, finish reason, tool call or error can hide in it. A
read that is exactly one such ``data: ...\\n\\n`` event is counted before the SSE splitter
sees it. Ollama's chunks differ only in their token; a chunk of another shape (an empty
token, content after reasoning, a ``created`` restamped by older servers each second) is
parsed, and becomes the shape if it carried only a token. Responses deltas are told by
their ``event:`` name and a non-empty ``"delta":"``: only lifecycle events are parsed there.

The facts are the same as parsing every event (for valid UTF-8 JSON, which is what Go
writes), and do not depend on how the body was split into reads. A body over 16 KB (say
embeddings), or an event over 16 KB past the first token (a long ``response.completed``)
with every event after it, so their order holds, is parsed by ``resolve()`` instead.

``finish_reason`` for ``/v1/responses``, from the response's ``status``:
``completed`` -> ``tool_calls`` if it has a ``function_call`` output item, else ``length``
if ``usage.output_tokens`` reached the echoed ``max_output_tokens`` (Ollama reports a
response cut at the limit as completed), else ``stop``; ``incomplete`` -> ``length`` for
``incomplete_details.reason`` ``max_output_tokens``, else that reason (``incomplete`` when
absent); ``failed`` -> unchanged (``error`` says why); ``queued`` / ``in_progress`` ->
unchanged; any other status (``cancelled``) -> the status itself. So ``stop`` / ``length`` /
``tool_calls`` mean what they mean for chat and completions.
"""

from __future__ import annotations

import re
from typing import Any, Final, Literal

import orjson

from ._native import error_message
from ._sse import SSESplitter

Kind = Literal["chat", "completion", "embedding", "response"]
KINDS: Final = ("chat", "completion", "embedding", "response")

DEFER_SIZE: Final = 16 * 1024  # bytes: larger bodies and late events are parsed by resolve()

_UNDECIDED, _SSE, _JSON = 0, 1, 2
_FAST_OFF, _FAST_SHAPE, _FAST_DELTA = 0, 1, 2

_DONE = b"[DONE]"
_QUOTE = b'"'
_LF = b"\n"
_CR = b"\r"
_EVENT_END = b"\n\n"
_EVENT_PREFIX = b"event: "
_DATA_PREFIX = b"data: "
_DELTA_KEY = b'"delta":"'
_FUNCTION_CALL = b'"function_call"'
_USAGE_KEY = b'"usage"'
_CHOICES_KEY = b'"choices"'
_CHOICES_FULL = b":[{"
_SPACE = b" \t\r\n"
# The body of a JSON string: no quote, backslash or control byte but in a valid escape.
# Its two parts cannot match the same bytes, so a failing match backtracks linearly
# (possessive quantifiers would be clearer but need Python 3.11).
_string_body = re.compile(
    rb'[^"\\\x00-\x1f]*(?:\\(?:["\\/bfnrt]|u[0-9a-fA-F]{4})[^"\\\x00-\x1f]*)*'
).fullmatch

_FUNCTION_CALL_DELTA = "response.function_call_arguments.delta"
_TEXT_DELTA = "response.output_text.delta"
_DELTA_NAMES = frozenset(
    {
        _TEXT_DELTA,
        "response.refusal.delta",
        "response.reasoning_text.delta",
        "response.reasoning_summary_text.delta",
        _FUNCTION_CALL_DELTA,
    }
)
# Whole reads of the deltas a stream is made of (a function call's sets tool_calls: not here).
_DELTA_READS = tuple(
    b"event: " + name.encode() + b"\ndata: "
    for name in sorted(_DELTA_NAMES - {_FUNCTION_CALL_DELTA}, key=lambda n: n != _TEXT_DELTA)
)
_DELTA_READ_MIN = min(len(prefix) for prefix in _DELTA_READS)
_TERMINAL_NAMES = frozenset({"response.completed", "response.failed", "response.incomplete"})
_ITEM_NAMES = frozenset({"response.output_item.added", "response.output_item.done"})
_START_NAMES = frozenset({"response.created", "response.in_progress", "response.queued"})
_STATUS_OF = {
    "response.completed": "completed",
    "response.failed": "failed",
    "response.incomplete": "incomplete",
}


def _int(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _loads(data: bytes) -> dict[str, Any] | None:
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    return obj if isinstance(obj, dict) else None


def _has_function_call(output: object) -> bool:
    return isinstance(output, list) and any(
        isinstance(item, dict) and item.get("type") == "function_call" for item in output
    )


def _string_end(data: bytes, start: int) -> int:
    """The index of the quote closing the JSON string whose body starts at ``start``."""
    end = data.find(_QUOTE, start)
    while end > 0:
        slashes = 0
        while data[end - 1 - slashes] == 92:  # backslash
            slashes += 1
        if not slashes % 2:
            return end
        end = data.find(_QUOTE, end + 1)
    return -1


def _skip_space(data: bytes, pos: int) -> int:
    while pos < len(data) and data[pos] in _SPACE:
        pos += 1
    return pos


def is_usage_only_chunk(data: str | bytes) -> bool:
    """True for a chat/completions chunk whose ``choices`` is empty and that carries ``usage``.

    That is the chunk ``stream_options.include_usage`` adds. Byte checks reject every other
    chunk (Ollama's completions chunks carry a zero ``usage`` too, but never ``"choices":[]``);
    a candidate is confirmed by parsing it.
    """
    raw = data.encode() if isinstance(data, str) else data
    if raw.find(_USAGE_KEY) < 0:  # find: quicker than "in" for bytes
        return False
    key = raw.find(_CHOICES_KEY)
    while key >= 0:
        pos = key + len(_CHOICES_KEY)
        if not raw.startswith(_CHOICES_FULL, pos):  # compact and non-empty: not this one
            pos = _skip_space(raw, pos)
            if raw.startswith(b":", pos):
                pos = _skip_space(raw, pos + 1)
                if raw.startswith(b"[", pos) and raw.startswith(b"]", _skip_space(raw, pos + 1)):
                    obj = _loads(raw)
                    return (
                        obj is not None
                        and obj.get("choices") == []
                        and isinstance(obj.get("usage"), dict)
                    )
        key = raw.find(_CHOICES_KEY, pos)
    return False


class OpenAIParser:
    """Consumes the bytes of one OpenAI-compatible response, split anywhere.

    ``kind``: ``chat`` (/v1/chat/completions), ``completion`` (/v1/completions),
    ``embedding`` (/v1/embeddings), ``response`` (/v1/responses). ``stream``: the body is
    ``text/event-stream`` (one that turns out to be a JSON object, an error answered
    instead of a stream, is read as such).

    ``feed`` returns True exactly once: for the read that completed the first event
    carrying a token (chat: content, reasoning or tool calls; completions: text; responses:
    a text, refusal, reasoning or function-call arguments delta). Read the facts after
    ``finish()`` and ``resolve()``:

    - ``model``, ``system_fingerprint``: the first the body names.
    - ``prompt_tokens``, ``completion_tokens``, ``total_tokens``, ``reasoning_tokens``,
      ``cached_tokens``: the last non-zero usage (never a sum); ``usage_seen`` when a usage
      counted: a non-zero one, or a zero one in the usage-only chunk, a whole body or a
      terminal response (the zero usage Ollama puts on every completions chunk is not).
    - ``finish_reason``: the last non-null one of any choice (responses: see the module).
    - ``tool_calls``: a tool call or function call was made.
    - ``token_events``: events that carried a token (0 for a whole body).
    - ``first_token_seen``; ``completed``: ``[DONE]``, a terminal responses event, or a
      whole body that is not an error.
    - ``error``, ``error_type``, ``error_code``: the first error the body reported.
    - ``malformed``: events or bodies that were not JSON objects.
    """

    __slots__ = (
        "_body",
        "_chat",
        "_deferred",
        "_deferring",
        "_fast",
        "_first_now",
        "_kept",
        "_kind",
        "_mode",
        "_nonzero_usage",
        "_post",
        "_post_len",
        "_pre",
        "_pre_len",
        "_read_post",
        "_read_post_len",
        "_read_pre",
        "_read_pre_len",
        "_responses",
        "_splitter",
        "cached_tokens",
        "completed",
        "completion_tokens",
        "error",
        "error_code",
        "error_type",
        "finish_reason",
        "first_token_seen",
        "malformed",
        "model",
        "prompt_tokens",
        "reasoning_tokens",
        "system_fingerprint",
        "token_events",
        "tool_calls",
        "total_tokens",
        "usage_seen",
    )

    def __init__(self, kind: Kind, stream: bool) -> None:
        if kind not in KINDS:
            raise ValueError(f"unknown kind {kind!r}: expected one of {KINDS}")
        self._kind = kind
        self._chat = kind == "chat"
        self._responses = kind == "response"
        self._mode = _UNDECIDED if stream else _JSON
        self._splitter = SSESplitter()
        self._body: list[bytes] = []  # a whole body's reads (or white space before a stream)
        self._deferred: bytes | None = None  # a whole body waiting for resolve()
        self._kept: list[tuple[str | None, bytes]] = []  # events waiting for resolve()
        self._deferring = False
        self._fast = _FAST_OFF
        self._first_now = False
        self._nonzero_usage = False
        # The learnt token-event shape (see the module docstring), bare and as a whole read.
        self._pre = self._post = self._read_pre = self._read_post = b""
        self._pre_len = self._post_len = self._read_pre_len = self._read_post_len = -1

        self.model: str | None = None
        self.system_fingerprint: str | None = None
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.total_tokens = 0
        self.reasoning_tokens = 0
        self.cached_tokens = 0
        self.usage_seen = False
        self.finish_reason: str | None = None
        self.tool_calls = False
        self.token_events = 0
        self.first_token_seen = False
        self.completed = False
        self.error: str | None = None
        self.error_type: str | None = None
        self.error_code: str | None = None
        self.malformed = 0  # events or bodies that were not a JSON object

    # --- the caller's path -------------------------------------------------------------

    def feed(self, data: bytes, _lf: bytes = _LF, _cr: bytes = _CR) -> bool:
        """Takes one read; True if it completed the first event carrying a token."""
        # Constants are default arguments: this runs for every read of a stream.
        fast = self._fast
        if fast == _FAST_SHAPE:
            start = self._read_pre_len
            end = len(data) - self._read_post_len
            if (
                start < end
                and data.startswith(self._read_pre)
                and data.endswith(self._read_post)
                and _string_body(data, start, end) is not None
            ):
                self.token_events += 1  # one whole event: the shape, another token
                return False
        elif (
            fast == _FAST_DELTA
            and data.startswith(_DELTA_READS)  # then the first LF ends the event line
            and data.endswith(_EVENT_END)
            and data.find(_lf, data.find(_lf) + 1) == len(data) - 2
            and data.find(_cr) < 0
        ):
            key = data.find(_DELTA_KEY, _DELTA_READ_MIN)
            if key >= 0 and data[key + 9] not in b'"\n':
                self.token_events += 1  # one whole text or reasoning delta event
                return False
        return self._feed(data)

    def finish(self) -> bool:
        """Takes what the end of the body completes; True if that was the first token."""
        if self._mode == _SSE:
            event = self._splitter.finish()
            self._fast = _FAST_OFF
            if event is not None:
                self._event(event.name, event.data)
        elif self._mode == _JSON and self._body:
            body = b"".join(self._body)
            self._body.clear()
            if len(body) > DEFER_SIZE:
                self._deferred = body
            else:
                self._whole(body)
        if self._first_now:
            self._first_now = False
            return True
        return False

    def resolve(self) -> None:
        """Parses what was kept for later (large bodies, late large events). Call after finish()."""
        body, self._deferred = self._deferred, None
        if body is not None:
            self._whole(body)
        kept, self._kept = self._kept, []
        self._deferring = False
        for name, data in kept:
            self._handle(name, data, False)

    # --- reads and events ----------------------------------------------------------------

    def _feed(self, data: bytes) -> bool:
        mode = self._mode
        if mode != _SSE:
            if mode == _UNDECIDED:
                # A stream whose first byte but white space is "{" is a JSON body: an
                # error answered where a stream was asked for.
                stripped = data.lstrip(_SPACE)
                self._body.append(data)
                if not stripped:
                    return False
                if stripped[0] == 123:
                    self._mode = _JSON
                    return False
                self._mode = _SSE
                data = b"".join(self._body)  # white space before an event is still SSE
                self._body.clear()
            else:
                self._body.append(data)
                return False
        for name, event_data, _ in self._splitter.feed(data):
            self._event(name, event_data)
        if self._deferring or not self.first_token_seen or not self._splitter.at_boundary:
            self._fast = _FAST_OFF
        elif self._responses:
            self._fast = _FAST_DELTA
        else:
            self._fast = _FAST_SHAPE if self._pre_len >= 0 else _FAST_OFF
        if self._first_now:
            self._first_now = False
            return True
        return False

    def _event(self, name: str | None, data: bytes) -> None:
        if not data:
            return  # a comment, a stray blank line, an event without data: nothing said
        if self._deferring:
            self._kept.append((name, data))
            return
        self._handle(name, data, True)

    def _object(self, name: str | None, data: bytes, defer: bool) -> dict[str, Any] | None:
        """The event's JSON object, or None when it was set aside for ``resolve()`` or is
        not an object (counted; an ``error`` event's text is still taken as the error)."""
        if self._defer(name, data, defer):
            return None
        obj = _loads(data)
        if obj is None:
            self.malformed += 1
            if name == "error":
                self._take_error(data.decode("utf-8", "replace"), None, None)
        return obj

    def _defer(self, name: str | None, data: bytes, defer: bool) -> bool:
        """Keeps a large event past the first token (and all after it) for resolve()."""
        if defer and self.first_token_seen and len(data) > DEFER_SIZE:
            self._deferring = True
            self._kept.append((name, data))
            return True
        return False

    def _handle(self, name: str | None, data: bytes, defer: bool) -> None:
        if self._responses:
            self._response_event(name, data, defer)
            return
        start = self._pre_len
        if start >= 0:
            end = len(data) - self._post_len
            if (
                start < end
                and data.startswith(self._pre)
                and data.endswith(self._post)
                and _string_body(data, start, end) is not None
            ):
                self.token_events += 1
                return
        if data == _DONE:
            self.completed = True
            return
        obj = self._object(name, data, defer)
        if obj is None:
            return
        if name == "error" or obj.get("error") is not None:
            self._error_object(obj)
            return
        self._choices(obj, data, True)

    def _token(self) -> None:
        self.token_events += 1
        if not self.first_token_seen:
            self.first_token_seen = True
            self._first_now = True

    # --- chat, completions, embeddings -------------------------------------------------------

    def _choices(self, obj: dict[str, Any], data: bytes, streamed: bool) -> None:
        """A chat or completion chunk, a whole chat/completion/embeddings body."""
        if self.model is None:
            self.model = _text(obj.get("model"))
        if self.system_fingerprint is None:
            self.system_fingerprint = _text(obj.get("system_fingerprint"))
        choices = obj.get("choices")
        token = False
        pure = streamed and isinstance(choices, list) and len(choices) == 1  # learnable?
        key = b""
        if isinstance(choices, list):
            for choice in choices:
                if not isinstance(choice, dict):
                    pure = False
                    continue
                reason = choice.get("finish_reason")
                if reason is not None:
                    pure = False
                    if isinstance(reason, str) and reason:
                        self.finish_reason = reason
                if not self._chat:
                    text = choice.get("text")
                    if text:
                        token = True
                        key = b'"text":"' if isinstance(text, str) else b""
                    continue
                message = choice.get("delta" if streamed else "message")
                if not isinstance(message, dict):
                    continue
                if message.get("tool_calls"):
                    self.tool_calls = True
                    token = True
                    pure = False
                for field in ("content", "reasoning", "reasoning_content"):
                    value = message.get(field)
                    if value:
                        if token:
                            pure = False  # two token fields: the shape would check one
                        token = True
                        key = b'"' + field.encode() + b'":"' if isinstance(value, str) else b""
        usage = obj.get("usage")
        if usage is not None:
            # A zero usage beside choices is Ollama's completions placeholder: no fact.
            real = not streamed or not choices
            if not isinstance(usage, dict) or self._take_usage(usage, real):
                pure = False
        if not streamed:
            self.completed = True
            return
        if token:
            self._token()
            if pure and key:
                self._learn(data, key)

    def _learn(self, data: bytes, key: bytes) -> None:
        """Keeps the bytes around this pure token event's token string as the shape."""
        at = data.find(key)
        if at < 0 or data.find(key, at + 1) >= 0:
            return  # absent (spaces around the colon) or not unique: no shape
        start = at + len(key)
        end = _string_end(data, start)
        if end < 0:
            return
        self._pre = data[:start]
        self._post = data[end:]
        self._pre_len = start
        self._post_len = len(data) - end
        self._read_pre = _DATA_PREFIX + self._pre
        self._read_post = self._post + _EVENT_END
        self._read_pre_len = len(self._read_pre)
        self._read_post_len = len(self._read_post)

    def _take_usage(self, usage: dict[str, Any], real: bool) -> bool:
        """Takes the last non-zero usage; a zero one only if real and none came before.

        Returns whether the usage is a fact (it was taken, or would have been).
        """
        if self._responses:
            prompt, completion = usage.get("input_tokens"), usage.get("output_tokens")
            prompt_details = usage.get("input_tokens_details")
            completion_details = usage.get("output_tokens_details")
        else:
            prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
            prompt_details = usage.get("prompt_tokens_details")
            completion_details = usage.get("completion_tokens_details")
        total = usage.get("total_tokens")
        prompt_n, completion_n = _int(prompt), _int(completion)
        total_n = _int(total) if total is not None else prompt_n + completion_n
        if not (prompt_n or completion_n or total_n):
            if not real:
                return False
            if self._nonzero_usage:
                return True
        else:
            self._nonzero_usage = True
        self.usage_seen = True
        self.prompt_tokens, self.completion_tokens, self.total_tokens = (
            prompt_n,
            completion_n,
            total_n,
        )
        self.cached_tokens = (
            _int(prompt_details.get("cached_tokens")) if isinstance(prompt_details, dict) else 0
        )
        self.reasoning_tokens = (
            _int(completion_details.get("reasoning_tokens"))
            if isinstance(completion_details, dict)
            else 0
        )
        return True

    # --- errors ---------------------------------------------------------------------------

    def _take_error(self, message: str, error_type: object, code: object) -> None:
        if self.error is not None:
            return  # the first error is the cause; later ones follow from it
        self.error = message
        self.error_type = _text(error_type)
        self.error_code = None if code is None or isinstance(code, (dict, list)) else str(code)

    def _error_object(self, obj: dict[str, Any]) -> None:
        """``{"error": ...}`` (a body or a chunk), or an ``error`` event's own object."""
        error = obj.get("error")
        if error is None:
            error = obj  # a Responses ``error`` event: {"type":"error","code","message",...}
        message = error_message({"error": error}) or ""
        if isinstance(error, dict):
            self._take_error(message, error.get("type"), error.get("code"))
        else:
            self._take_error(message, None, None)

    # --- /v1/responses ------------------------------------------------------------------

    def _response_event(self, name: str | None, data: bytes, defer: bool) -> None:
        if name is None or name == "message":
            if data == _DONE:
                return  # not sent on this route, and says nothing its events do not
            if self._defer(name, data, defer):
                return
            obj = _loads(data)
            if obj is None:
                self.malformed += 1
                return
            name = obj.get("type")
            if not isinstance(name, str):
                if obj.get("error") is not None:
                    self._error_object(obj)
                return
            if name in _DELTA_NAMES:
                delta = obj.get("delta")
                if isinstance(delta, str) and delta:
                    self._token()
                if name == _FUNCTION_CALL_DELTA:
                    self.tool_calls = True
                return
            self._response_parsed(name, obj)
            return
        if name in _DELTA_NAMES:
            key = data.find(_DELTA_KEY)
            if 0 <= key < len(data) - 9 and data[key + 9] != 34:
                self._token()
            if name == _FUNCTION_CALL_DELTA:
                self.tool_calls = True
            return
        if name in _TERMINAL_NAMES:
            self.completed = True
        elif name in _ITEM_NAMES:
            if data.find(_FUNCTION_CALL) < 0:
                return  # a message or reasoning item: nothing to learn
        elif name in _START_NAMES:
            if self.model is not None:
                return
        elif name != "error":
            return  # content_part, output_text.done, ...: nothing a record needs
        obj = self._object(name, data, defer)
        if obj is None:
            return
        self._response_parsed(name, obj)

    def _response_parsed(self, name: str, obj: dict[str, Any]) -> None:
        if name == "error":
            self._error_object(obj)
        elif name in _TERMINAL_NAMES:
            self.completed = True
            response = obj.get("response")
            if isinstance(response, dict):
                self._response(response, _STATUS_OF[name])
        elif name in _ITEM_NAMES:
            item = obj.get("item")
            if isinstance(item, dict) and item.get("type") == "function_call":
                self.tool_calls = True
        elif name in _START_NAMES:
            response = obj.get("response")
            if isinstance(response, dict) and self.model is None:
                self.model = _text(response.get("model"))

    def _response(self, response: dict[str, Any], default_status: str) -> None:
        """A response object: a terminal event's, or a whole non-streamed body."""
        if self.model is None:
            self.model = _text(response.get("model"))
        function_call = _has_function_call(response.get("output"))
        if function_call:
            self.tool_calls = True
        usage = response.get("usage")
        if isinstance(usage, dict):
            self._take_usage(usage, True)
        error = response.get("error")
        if error is not None:
            self._error_object({"error": error})
        status = response.get("status")
        if not isinstance(status, str):
            status = default_status
        if status == "completed":
            limit = response.get("max_output_tokens")
            output = _int(usage.get("output_tokens")) if isinstance(usage, dict) else 0
            if function_call:
                self.finish_reason = "tool_calls"
            elif isinstance(limit, int) and 0 < limit <= output:
                self.finish_reason = "length"
            else:
                self.finish_reason = "stop"
        elif status == "incomplete":
            details = response.get("incomplete_details")
            reason = details.get("reason") if isinstance(details, dict) else None
            if reason == "max_output_tokens":
                self.finish_reason = "length"
            else:
                self.finish_reason = _text(reason) or "incomplete"
        elif status not in ("failed", "in_progress", "queued"):
            self.finish_reason = status

    # --- whole bodies ---------------------------------------------------------------------

    def _whole(self, body: bytes) -> None:
        obj = _loads(body)
        if obj is None:
            self.malformed += 1
            return
        if self._responses and ("status" in obj or obj.get("object") == "response"):
            self.completed = True
            self._response(obj, "completed")
        elif obj.get("error") is not None:
            self._error_object(obj)
        elif self._responses:
            self.completed = True
            self._response(obj, "completed")
        else:
            self._choices(obj, body, False)
