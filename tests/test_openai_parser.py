"""The SSE splitter and the OpenAI-compatible parser: facts from whole and split bodies.

The bodies are built as Ollama frames them (middleware/openai.go, openai/openai.go,
openai/responses.go): Go's ``json.Marshal`` (struct field order, map keys sorted, ``<>&``
escaped), ``data: {json}\\n\\n`` events, ``event: name\\ndata: {json}\\n\\n`` for
/v1/responses, ``json.Encoder`` (a trailing newline) for whole bodies.
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Callable, Iterator
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from revenium_ollama_transport._wire import _openai
from revenium_ollama_transport._wire._openai import (
    DEFER_SIZE,
    Kind,
    OpenAIParser,
    is_usage_only_chunk,
)
from revenium_ollama_transport._wire._sse import SSEEvent, SSESplitter
from revenium_ollama_transport.testing._wire import go_json, go_map

# --- Go's JSON and Ollama's framing ------------------------------------------------------

MODEL = "qwen2.5:0.5b"
CREATED = 1721680565


def sse(obj: object) -> bytes:
    return b"data: " + go_json(obj) + b"\n\n"


def body(obj: object) -> bytes:
    return go_json(obj) + b"\n"  # json.NewEncoder(w).Encode adds a newline


DONE = b"data: [DONE]\n\n"
TOOL_CALL = {
    "id": "call_k3x9",
    "index": 0,
    "type": "function",
    "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
}


def chat_chunk(
    content: str = "",
    *,
    reasoning: str = "",
    tool_calls: list[dict[str, Any]] | None = None,
    finish: str | None = None,
    created: int = CREATED,
) -> dict[str, Any]:
    delta: dict[str, Any] = {"role": "assistant", "content": content}
    if reasoning:
        delta["reasoning"] = reasoning
    if tool_calls:
        delta["tool_calls"] = tool_calls
    return {
        "id": "chatcmpl-42",
        "object": "chat.completion.chunk",
        "created": created,
        "model": MODEL,
        "system_fingerprint": "fp_ollama",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }


def usage_of(prompt: int, completion: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def chat_usage_chunk(prompt: int, completion: int) -> dict[str, Any]:
    chunk = chat_chunk(finish="stop")
    chunk["choices"] = []
    chunk["usage"] = usage_of(prompt, completion)
    return chunk


def chat_stream(
    tokens: list[str],
    *,
    finish: str | None = "stop",
    usage: tuple[int, int] | None = (12, 3),
    done: bool = True,
    before: list[dict[str, Any]] | None = None,
) -> bytes:
    """Token chunks, the finish chunk, the include_usage chunk, ``[DONE]``."""
    parts = [sse(chunk) for chunk in before or []]
    parts += [sse(chat_chunk(token)) for token in tokens]
    if finish is not None:
        parts.append(sse(chat_chunk(finish=finish)))
        if usage is not None:
            parts.append(sse(chat_usage_chunk(*usage)))
        if done:
            parts.append(DONE)
    return b"".join(parts)


def completion_chunk(
    text: str = "", *, finish: str | None = None, usage: dict[str, int] | None = None
) -> dict[str, Any]:
    chunk: dict[str, Any] = {
        "id": "cmpl-7",
        "object": "text_completion",
        "created": CREATED,
        "choices": [{"text": text, "index": 0, "finish_reason": finish}],
        "model": MODEL,
        "system_fingerprint": "fp_ollama",
    }
    if usage is not None:
        chunk["usage"] = usage
    return chunk


def completion_stream(
    tokens: list[str],
    *,
    finish: str | None = "stop",
    include_usage: bool = True,
    usage: tuple[int, int] = (9, 4),
) -> bytes:
    """With include_usage Ollama puts a zero usage on every chunk, the real one at the end."""
    zero = usage_of(0, 0) if include_usage else None
    parts = [sse(completion_chunk(token, usage=zero)) for token in tokens]
    if finish is not None:
        parts.append(sse(completion_chunk(finish=finish, usage=zero)))
        if include_usage:
            last = completion_chunk(finish=finish, usage=usage_of(*usage))
            last["choices"] = []
            parts.append(sse(last))
        parts.append(DONE)
    return b"".join(parts)


ERROR_OBJECT = {
    "error": {
        "message": 'model "llama9" not found, try pulling it first',
        "type": "not_found_error",
        "param": None,
        "code": None,
    }
}


class ResponsesStream:
    """Ollama's ResponsesStreamConverter: named events, a sequence number on each."""

    def __init__(self, max_output_tokens: int | None = None) -> None:
        self.parts: list[bytes] = []
        self.sequence = 0
        self.max_output_tokens = max_output_tokens

    def event(self, name: str, **data: Any) -> ResponsesStream:
        data["type"] = name
        data["sequence_number"] = self.sequence
        self.sequence += 1
        self.parts.append(
            b"event: " + name.encode() + b"\ndata: " + go_json(go_map(data)) + b"\n\n"
        )
        return self

    def response(
        self,
        status: str,
        output: list[Any],
        usage: dict[str, Any] | None,
        **extra: Any,
    ) -> dict[str, Any]:
        obj: dict[str, Any] = {
            "id": "resp_318204",
            "object": "response",
            "created_at": CREATED,
            "completed_at": None,
            "status": status,
            "incomplete_details": None,
            "model": MODEL,
            "previous_response_id": None,
            "instructions": None,
            "output": output,
            "error": None,
            "tools": [],
            "tool_choice": "auto",
            "truncation": "disabled",
            "parallel_tool_calls": True,
            "text": {"format": {"type": "text"}},
            "top_p": 1,
            "presence_penalty": 0,
            "frequency_penalty": 0,
            "top_logprobs": 0,
            "temperature": 1,
            "reasoning": None,
            "usage": usage,
            "max_output_tokens": self.max_output_tokens,
            "max_tool_calls": None,
            "store": False,
            "background": False,
            "service_tier": "default",
            "metadata": {},
            "safety_identifier": None,
            "prompt_cache_key": None,
        }
        obj.update(extra)
        return obj

    def start(self) -> ResponsesStream:
        for name in ("response.created", "response.in_progress"):
            self.event(name, response=self.response("in_progress", [], None))
        return self

    def thinking(self, pieces: list[str]) -> ResponsesStream:
        item = {"id": "rs_5521", "type": "reasoning", "summary": []}
        self.event("response.output_item.added", output_index=0, item=item)
        for piece in pieces:
            self.event(
                "response.reasoning_summary_text.delta",
                item_id="rs_5521",
                output_index=0,
                summary_index=0,
                delta=piece,
            )
        text = "".join(pieces)
        self.event(
            "response.reasoning_summary_text.done",
            item_id="rs_5521",
            output_index=0,
            summary_index=0,
            text=text,
        )
        done = {**item, "summary": [{"type": "summary_text", "text": text}]}
        self.event("response.output_item.done", output_index=0, item=done)
        return self

    def text(self, tokens: list[str], index: int = 0) -> ResponsesStream:
        item = {"id": "msg_7731", "type": "message", "status": "in_progress", "role": "assistant"}
        self.event("response.output_item.added", output_index=index, item={**item, "content": []})
        part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
        ids = {"item_id": "msg_7731", "output_index": index, "content_index": 0}
        self.event("response.content_part.added", **ids, part=part)
        for token in tokens:
            self.event("response.output_text.delta", **ids, delta=token, logprobs=[])
        text = "".join(tokens)
        self.event("response.output_text.done", **ids, text=text, logprobs=[])
        self.event("response.content_part.done", **ids, part={**part, "text": text})
        self.event("response.output_item.done", output_index=index, item=self.message(text))
        return self

    @staticmethod
    def message(text: str) -> dict[str, Any]:
        content = {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
        return {
            "id": "msg_7731",
            "type": "message",
            "status": "completed",
            "role": "assistant",
            "content": [content],
        }

    @staticmethod
    def function_call(status: str = "completed", arguments: str = '{"city":"Paris"}') -> Any:
        return {
            "id": "fc_99_0",
            "type": "function_call",
            "status": status,
            "call_id": "call_k3x9",
            "name": "get_weather",
            "arguments": arguments,
        }

    def tool(self) -> ResponsesStream:
        added = self.function_call("in_progress", "")
        self.event("response.output_item.added", output_index=0, item=added)
        arguments = '{"city":"Paris"}'
        ids = {"item_id": "fc_99_0", "output_index": 0}
        self.event("response.function_call_arguments.delta", **ids, delta=arguments)
        self.event("response.function_call_arguments.done", **ids, arguments=arguments)
        self.event("response.output_item.done", output_index=0, item=self.function_call())
        return self

    def completed(self, output: list[Any], prompt: int = 11, completion: int = 5) -> bytes:
        usage = {
            "input_tokens": prompt,
            "output_tokens": completion,
            "total_tokens": prompt + completion,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens_details": {"reasoning_tokens": 0},
        }
        response = self.response("completed", output, usage, completed_at=CREATED + 1)
        self.event("response.completed", response=response)
        return self.bytes()

    def bytes(self) -> bytes:
        return b"".join(self.parts)


# --- the recorded bodies -------------------------------------------------------------------

TOKENS = ["Hello", " there", "!"]
# A few tokens Go writes with escapes or that look like keys, for the shape check.
AWKWARD = [
    '<think>"quoted"',
    "line\nbreak",
    "back\\slash\\",
    "usage",
    'x"},"finish_reason":null}]}',
    "\u2028é\t",
]

STREAMS: dict[str, tuple[Kind, bytes]] = {
    "chat_usage": ("chat", chat_stream(TOKENS)),
    "chat_no_usage": ("chat", chat_stream(TOKENS, usage=None)),
    "chat_length": ("chat", chat_stream(["a", "b"], finish="length", usage=(30, 2))),
    "chat_tool": (
        "chat",
        chat_stream([], before=[chat_chunk(tool_calls=[TOOL_CALL])], finish="tool_calls"),
    ),
    "chat_thinking": (
        "chat",
        chat_stream(["Yes"], before=[chat_chunk(reasoning="hmm"), chat_chunk(reasoning=" ok")]),
    ),
    "chat_awkward": ("chat", chat_stream(["a", *AWKWARD, "b", "c"])),
    "chat_cut": ("chat", chat_stream(TOKENS, finish=None)),
    "chat_error_chunk": ("chat", chat_stream(TOKENS, finish=None) + sse(ERROR_OBJECT)),
    "completion_usage": ("completion", completion_stream(["Once", " upon", " a"])),
    "completion_no_usage": (
        "completion",
        completion_stream(["Once", " upon"], include_usage=False, finish="length"),
    ),
    "completion_cut": ("completion", completion_stream(["Once", " upon"], finish=None)),
    "response_text": (
        "response",
        ResponsesStream().start().text(TOKENS).completed([ResponsesStream.message("Hello there!")]),
    ),
    "response_thinking": (
        "response",
        ResponsesStream()
        .start()
        .thinking(["hm", "m"])
        .text(["Yes"], 1)
        .completed([ResponsesStream.message("Yes")]),
    ),
    "response_tool": (
        "response",
        ResponsesStream().start().tool().completed([ResponsesStream.function_call()]),
    ),
    "response_cut": ("response", ResponsesStream().start().text(TOKENS).bytes()[:-200]),
}

NON_STREAMED_CHAT = {
    "id": "chatcmpl-318",
    "object": "chat.completion",
    "created": CREATED,
    "model": MODEL,
    "system_fingerprint": "fp_ollama",
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "Hello there!"},
            "finish_reason": "stop",
        }
    ],
    "usage": usage_of(20, 7),
}
NON_STREAMED_COMPLETION = {
    "id": "cmpl-318",
    "object": "text_completion",
    "created": CREATED,
    "model": MODEL,
    "system_fingerprint": "fp_ollama",
    "choices": [{"text": "Once upon a", "index": 0, "finish_reason": "length"}],
    "usage": usage_of(5, 3),
}


def embedding_body(inputs: int) -> bytes:
    data = [
        {"object": "embedding", "embedding": [0.0123456789 * (i + 1)] * 48, "index": i}
        for i in range(inputs)
    ]
    obj = {
        "object": "list",
        "data": data,
        "model": "all-minilm",
        "usage": {"prompt_tokens": 4 * inputs, "total_tokens": 4 * inputs},
    }
    return body(obj)


BODIES: dict[str, tuple[Kind, bytes]] = {
    "chat": ("chat", body(NON_STREAMED_CHAT)),
    "chat_tool": (
        "chat",
        body(
            {
                **NON_STREAMED_CHAT,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": "", "tool_calls": [TOOL_CALL]},
                        "finish_reason": "tool_calls",
                    }
                ],
            }
        ),
    ),
    "completion": ("completion", body(NON_STREAMED_COMPLETION)),
    "embedding": ("embedding", embedding_body(2)),
    "error": ("chat", body(ERROR_OBJECT)),
    "response": (
        "response",
        body(ResponsesStream().response("completed", [ResponsesStream.message("Hi")], None)),
    ),
}

ALL: dict[str, tuple[Kind, bool, bytes]] = {
    **{f"stream_{name}": (kind, True, data) for name, (kind, data) in STREAMS.items()},
    **{f"body_{name}": (kind, False, data) for name, (kind, data) in BODIES.items()},
}


# --- helpers -------------------------------------------------------------------------------


def parse(kind: Kind, stream: bool, chunks: list[bytes]) -> tuple[OpenAIParser, list[int]]:
    """Feeds ``chunks``; returns the parser and the indexes of reads that reported a token."""
    parser = OpenAIParser(kind, stream)
    firsts = [i for i, chunk in enumerate(chunks) if parser.feed(chunk)]
    if parser.finish():
        firsts.append(len(chunks))
    parser.resolve()
    return parser, firsts


def facts(parser: OpenAIParser) -> tuple[object, ...]:
    return (
        parser.model,
        parser.system_fingerprint,
        parser.prompt_tokens,
        parser.completion_tokens,
        parser.total_tokens,
        parser.usage_seen,
        parser.reasoning_tokens,
        parser.cached_tokens,
        parser.finish_reason,
        parser.tool_calls,
        parser.token_events,
        parser.first_token_seen,
        parser.completed,
        parser.error,
        parser.error_type,
        parser.error_code,
        parser.malformed,
    )


def events_of(data: bytes) -> list[bytes]:
    """The body as Ollama writes it: one read per event (and what is left of a cut one)."""
    *events, rest = data.split(b"\n\n")
    return [event + b"\n\n" for event in events] + ([rest] if rest else [])


def split_at(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c for c in cuts if 0 < c < len(data)})
    edges = [0, *points, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(edges)]


def reframe(data: bytes, newline: bytes) -> bytes:
    """The same stream with other line ends (JSON text holds no raw line end)."""
    return data.replace(b"\n", newline)


def whole(name: str) -> OpenAIParser:
    kind, stream, data = ALL[name]
    return parse(kind, stream, [data])[0]


# --- SSESplitter ---------------------------------------------------------------------------


def split_all(chunks: list[bytes]) -> tuple[list[SSEEvent], SSEEvent | None]:
    splitter = SSESplitter()
    events = [event for chunk in chunks for event in splitter.feed(chunk)]
    return events, splitter.finish()


def reference_events(data: bytes) -> list[tuple[str | None, bytes]]:
    """The WHATWG algorithm, written plainly on the whole body: the events it dispatches,
    then the unit the body's end leaves undispatched, as ``SSESplitter.finish`` gives it
    (its last line taken although it has no line end)."""
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    events: list[tuple[str | None, bytes]] = []
    lines: list[bytes] | None = None
    name = b""

    def pending() -> tuple[str | None, bytes]:
        if lines is None:
            return None, b""  # no data: no event (nor its name)
        return name.decode("utf-8", "replace") or None, b"\n".join(lines)

    pieces = re.split(rb"\r\n|\r|\n", data)  # the last one has no line end
    for index, line in enumerate(pieces):
        if not line:
            if index < len(pieces) - 1:  # a blank line
                events.append(pending())
                lines, name = None, b""
            continue
        if line.startswith(b":"):
            continue
        field, colon, value = line.partition(b":")
        if colon and value.startswith(b" "):
            value = value[1:]
        if field == b"data":
            lines = [*(lines or []), value]
        elif field == b"event":
            name = value
    events.append(pending())  # (None, b"") when nothing is pending
    return events


def dispatched(events: list[SSEEvent]) -> list[tuple[str | None, bytes]]:
    """Events with something in them: (None, b"") is also what a unit without data gives."""
    return [(e.name, e.data) for e in events if e.name is not None or e.data]


def visible(events: list[tuple[str | None, bytes]]) -> list[tuple[str | None, bytes]]:
    return [event for event in events if event != (None, b"")]


def test_splitter_ollama_events_one_read_each() -> None:
    data = STREAMS["chat_usage"][1]
    events, rest = split_all(events_of(data))
    assert rest is None
    assert [e.raw for e in events] == events_of(data)
    assert events[-1] == SSEEvent(None, b"[DONE]", DONE)
    assert orjson.loads(events[0].data)["choices"][0]["delta"]["content"] == "Hello"


def test_splitter_named_events() -> None:
    events, _ = split_all(events_of(STREAMS["response_text"][1]))
    assert events[0].name == "response.created"
    assert events[-1].name == "response.completed"
    assert all(orjson.loads(e.data)["type"] == e.name for e in events)


def test_splitter_whatwg_fields() -> None:
    data = (
        b"\xef\xbb\xbf: a comment\n"
        b"event: first\n"
        b"data:no space\n"
        b"data:  two spaces\n"
        b"id: 7\nretry: 10\nunknown\ndatax: not data\n"
        b"data\n"
        b"\n"
        b"event: only a name\n\n"
        b"data: \n\n"
    )
    events, rest = split_all([data])
    assert rest is None
    assert [(e.name, e.data) for e in events] == [
        ("first", b"no space\n two spaces\n"),
        (None, b""),  # a name without data: not dispatched by the spec
        (None, b""),  # an empty data line: dispatched, with empty data
    ]
    assert b"".join(e.raw for e in events) == data


@pytest.mark.parametrize("newline", [b"\n", b"\r\n", b"\r"])
def test_splitter_line_ends(newline: bytes) -> None:
    data = b"data: a" + newline + b"data: b" + newline + newline + b"data: c" + newline * 2
    events, _ = split_all([data])
    assert [e.data for e in events] == [b"a\nb", b"c"]
    assert events[0].raw == b"data: a" + newline + b"data: b" + newline * 2


def test_splitter_crlf_split_between_reads_is_one_line_end() -> None:
    splitter = SSESplitter()
    assert splitter.feed(b"data: a\r") == []
    assert splitter.feed(b"\ndata: b\r") == []
    # Complete at its blank line's CR, but held: in a CRLF stream its LF is next.
    assert splitter.feed(b"\n\r") == []
    assert splitter.feed(b"\ndata: c\r\n\r") == [
        SSEEvent(None, b"a\nb", b"data: a\r\ndata: b\r\n\r\n")
    ]
    assert splitter.finish() == SSEEvent(None, b"c", b"data: c\r\n\r")  # no LF came


def test_splitter_cr_only_stream_is_not_held() -> None:
    splitter = SSESplitter()
    assert splitter.feed(b"data: a\r\r") == [SSEEvent(None, b"a", b"data: a\r\r")]
    assert splitter.feed(b"data: b\r\r") == [SSEEvent(None, b"b", b"data: b\r\r")]
    assert splitter.finish() is None


@pytest.mark.parametrize("newline", [b"\n", b"\r\n", b"\r"])
@pytest.mark.parametrize("name", ["chat_usage", "response_tool"])
def test_splitter_raws_do_not_depend_on_the_reads(name: str, newline: bytes) -> None:
    data = reframe(STREAMS[name][1], newline)
    expected = events_of(STREAMS[name][1])
    for cut in range(1, len(data)):
        events, rest = split_all([data[:cut], data[cut:]])
        raws = [e.raw for e in events] + ([rest.raw] if rest is not None else [])
        assert [raw.replace(newline, b"\n") for raw in raws] == expected, cut


def test_splitter_cr_then_cr_is_a_blank_line() -> None:
    events, _ = split_all([b"data: a\r", b"\r", b"data: b\r\r"])
    assert [e.data for e in events] == [b"a", b"b"]


def test_splitter_bom_only_at_the_start() -> None:
    bom = b"\xef\xbb\xbf"
    events, _ = split_all([bom[:1], bom[1:] + b"data: x\n\n" + bom + b"data: y\n\n"])
    assert [e.data for e in events] == [b"x", b""]  # the second BOM makes an unknown field


def test_splitter_finish_returns_an_unfinished_event() -> None:
    splitter = SSESplitter()
    assert splitter.feed(b"event: e\ndata: {") == []
    assert splitter.feed(b'"a":1}\n') == []
    assert splitter.finish() == SSEEvent("e", b'{"a":1}', b'event: e\ndata: {"a":1}\n')
    assert SSESplitter().finish() is None


def test_splitter_finish_keeps_trailing_bytes() -> None:
    events, rest = split_all([b"data: x\n\n: keep-alive\n"])
    assert [e.data for e in events] == [b"x"]
    assert rest == SSEEvent(None, b"", b": keep-alive\n")


def test_splitter_many_reads_of_one_event() -> None:
    data = b"data: " + b"x" * 10_000 + b"\n\n"
    events, _ = split_all([data[i : i + 7] for i in range(0, len(data), 7)])
    assert [e.raw for e in events] == [data]


def test_splitter_at_boundary() -> None:
    splitter = SSESplitter()
    assert not splitter.at_boundary  # a BOM may still come
    splitter.feed(b"data: a\n\n")
    assert splitter.at_boundary
    splitter.feed(b"data: b\n")
    assert not splitter.at_boundary
    splitter.feed(b"\n")
    assert splitter.at_boundary
    splitter.feed(b"data: c\r\r")
    assert not splitter.at_boundary  # a LF may still complete the CR


sse_bytes = st.lists(
    st.sampled_from(
        [
            *(b"data", b"data:", b"data: ", b"event:", b"event: x", b":", b"id: 1", b"x"),
            *(b"{}", b"\n", b"\r", b"\r\n", b"\n\n", b"\xef\xbb\xbf", b" ", b"\xff"),
        ]
    )
    | st.binary(max_size=6),
    max_size=40,
).map(b"".join)


@settings(max_examples=400, deadline=None)
@given(data=sse_bytes, cuts=st.lists(st.integers(1, 300), max_size=12))
def test_splitter_raw_concatenates_to_the_input(data: bytes, cuts: list[int]) -> None:
    events, rest = split_all(split_at(data, cuts))
    raws = b"".join(e.raw for e in events) + (rest.raw if rest is not None else b"")
    assert raws == data
    # An event whose blank line ends in a CR at the body's end may be held for a LF until
    # finish(): dispatched or returned then, it counts the same.
    assert dispatched([*events, *([rest] if rest else [])]) == visible(reference_events(data))


@settings(max_examples=300, deadline=None)
@given(chunks=st.lists(st.binary(max_size=60), max_size=20))
def test_splitter_arbitrary_bytes(chunks: list[bytes]) -> None:
    events, rest = split_all(chunks)
    data = b"".join(chunks)
    assert b"".join(e.raw for e in events) + (rest.raw if rest else b"") == data
    assert dispatched([*events, *([rest] if rest else [])]) == visible(reference_events(data))


# --- is_usage_only_chunk -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (go_json(chat_usage_chunk(12, 3)), True),
        (go_json(chat_usage_chunk(0, 0)), True),
        (orjson.loads(completion_stream(["a"]).split(b"\n\n")[2][6:]), True),
        (go_json(chat_chunk("Hi")), False),
        (go_json(chat_chunk(finish="stop")), False),
        (go_json(completion_chunk("a", usage=usage_of(0, 0))), False),
        (b'{"choices": [ ], "usage": {"prompt_tokens": 1}}', True),
        (b'{"choices":[],"usage":null}', False),
        (b'{"choices":[]}', False),
        (b'{"choices":[{"delta":{"content":"\\"choices\\":[]"}}],"usage":{}}', False),
        (b'{"model":"choices","choices":[],"usage":{"total_tokens":2}}', True),
        (b'{"choices":[],"usage":{}', False),  # not JSON
        (b"[DONE]", False),
    ],
)
def test_is_usage_only_chunk(data: bytes | dict[str, Any], expected: bool) -> None:
    raw = go_json(data) if isinstance(data, dict) else data
    assert is_usage_only_chunk(raw) is expected
    assert is_usage_only_chunk(raw.decode()) is expected


# --- chat ----------------------------------------------------------------------------------


def test_chat_stream_with_usage() -> None:
    data = STREAMS["chat_usage"][1]
    parser, firsts = parse("chat", True, events_of(data))
    assert firsts == [0]
    assert (parser.model, parser.system_fingerprint) == (MODEL, "fp_ollama")
    assert (parser.prompt_tokens, parser.completion_tokens, parser.total_tokens) == (12, 3, 15)
    assert parser.usage_seen
    assert (parser.finish_reason, parser.token_events, parser.completed) == ("stop", 3, True)
    assert (parser.tool_calls, parser.error, parser.malformed) == (False, None, 0)


def test_chat_stream_without_usage_has_no_counts() -> None:
    parser = whole("stream_chat_no_usage")
    assert not parser.usage_seen
    assert (parser.prompt_tokens, parser.completion_tokens) == (0, 0)
    assert (parser.token_events, parser.completed, parser.finish_reason) == (3, True, "stop")


def test_chat_length_finish() -> None:
    parser = whole("stream_chat_length")
    assert (parser.finish_reason, parser.completion_tokens, parser.token_events) == ("length", 2, 2)


def test_chat_tool_call_stream() -> None:
    parser, firsts = parse("chat", True, events_of(STREAMS["chat_tool"][1]))
    assert parser.tool_calls
    assert firsts == [0]  # a tool call is the first token
    assert (parser.finish_reason, parser.token_events, parser.completed) == ("tool_calls", 1, True)


def test_chat_reasoning_is_a_token() -> None:
    parser, firsts = parse("chat", True, events_of(STREAMS["chat_thinking"][1]))
    assert firsts == [0]
    assert parser.token_events == 3


def test_chat_stream_cut_before_done() -> None:
    parser = whole("stream_chat_cut")
    assert not parser.completed
    assert (parser.token_events, parser.finish_reason, parser.usage_seen) == (3, None, False)


def test_chat_error_chunk_in_stream() -> None:
    parser = whole("stream_chat_error_chunk")
    assert parser.error == ERROR_OBJECT["error"]["message"]
    assert (parser.error_type, parser.error_code) == ("not_found_error", None)
    assert (parser.completed, parser.token_events) == (False, 3)


def test_error_event_in_stream() -> None:
    data = (
        chat_stream(["a"], finish=None) + b'event: error\ndata: {"message":"busy","code":503}\n\n'
    )
    parser = parse("chat", True, [data])[0]
    assert (parser.error, parser.error_code) == ("busy", "503")


def test_awkward_tokens_are_counted_exactly() -> None:
    parser = whole("stream_chat_awkward")
    assert parser.token_events == len(AWKWARD) + 3
    assert (parser.finish_reason, parser.prompt_tokens, parser.malformed) == ("stop", 12, 0)


def test_first_token_after_empty_chunks() -> None:
    data = sse(chat_chunk("")) + chat_stream(TOKENS)
    parser, firsts = parse("chat", True, events_of(data))
    assert firsts == [1]
    assert parser.token_events == 3


def test_non_streamed_chat() -> None:
    parser, firsts = parse("chat", False, [BODIES["chat"][1]])
    assert firsts == []
    assert (parser.prompt_tokens, parser.completion_tokens, parser.total_tokens) == (20, 7, 27)
    assert (parser.finish_reason, parser.completed, parser.token_events) == ("stop", True, 0)
    assert (parser.model, parser.system_fingerprint) == (MODEL, "fp_ollama")


def test_non_streamed_chat_tool_calls() -> None:
    parser = whole("body_chat_tool")
    assert (parser.tool_calls, parser.finish_reason) == (True, "tool_calls")


def test_error_body() -> None:
    parser = whole("body_error")
    assert parser.error == ERROR_OBJECT["error"]["message"]
    assert parser.error_type == "not_found_error"
    assert not parser.completed
    assert not parser.usage_seen


def test_error_body_where_a_stream_was_expected() -> None:
    parser = parse("chat", True, [b"\n", body(ERROR_OBJECT)])[0]
    assert (parser.error_type, parser.completed) == ("not_found_error", False)


def test_usage_details() -> None:
    usage = {
        **usage_of(100, 40),
        "prompt_tokens_details": {"cached_tokens": 64},
        "completion_tokens_details": {"reasoning_tokens": 25},
    }
    chunk = {**chat_chunk(), "choices": [], "usage": usage}
    parser = parse("chat", True, [sse(chat_chunk("a")), sse(chunk), DONE])[0]
    assert (parser.reasoning_tokens, parser.cached_tokens, parser.total_tokens) == (25, 64, 140)


def test_usage_beside_choices_counts_when_not_zero() -> None:
    last = {**chat_chunk(finish="stop"), "usage": usage_of(8, 2)}  # another server's way
    parser = parse("chat", True, [sse(chat_chunk("a")) + sse(last) + DONE])[0]
    assert (parser.usage_seen, parser.prompt_tokens, parser.completion_tokens) == (True, 8, 2)


def test_zero_usage_of_an_empty_prompt_is_still_usage() -> None:
    data = chat_stream([], usage=(0, 0))
    parser = parse("chat", True, [data])[0]
    assert (parser.usage_seen, parser.total_tokens) == (True, 0)


# --- completions ---------------------------------------------------------------------------


def test_completion_stream_takes_the_last_non_zero_usage() -> None:
    parser, firsts = parse("completion", True, events_of(STREAMS["completion_usage"][1]))
    assert firsts == [0]
    assert (parser.prompt_tokens, parser.completion_tokens, parser.total_tokens) == (9, 4, 13)
    assert (parser.usage_seen, parser.token_events, parser.completed) == (True, 3, True)
    assert parser.finish_reason == "stop"


def test_completion_stream_cut_has_only_placeholder_usage() -> None:
    parser = whole("stream_completion_cut")
    assert not parser.usage_seen  # the zero usage on every chunk is not a count
    assert (parser.token_events, parser.completed) == (2, False)


def test_completion_stream_without_usage() -> None:
    parser = whole("stream_completion_no_usage")
    assert (parser.usage_seen, parser.finish_reason, parser.token_events) == (False, "length", 2)


def test_non_streamed_completion() -> None:
    parser = whole("body_completion")
    assert (parser.prompt_tokens, parser.completion_tokens, parser.finish_reason) == (
        5,
        3,
        "length",
    )
    assert parser.completed


# --- embeddings ----------------------------------------------------------------------------


def test_embedding_body() -> None:
    parser = whole("body_embedding")
    assert (parser.prompt_tokens, parser.completion_tokens, parser.total_tokens) == (8, 0, 8)
    assert (parser.model, parser.usage_seen, parser.completed) == ("all-minilm", True, True)


def test_large_embedding_body_is_parsed_only_by_resolve() -> None:
    data = embedding_body(64)
    assert len(data) > DEFER_SIZE
    parser = OpenAIParser("embedding", False)
    for i in range(0, len(data), 4096):
        assert not parser.feed(data[i : i + 4096])
    parser.finish()
    assert parser.model is None and not parser.usage_seen  # nothing parsed on the caller's path
    parser.resolve()
    assert (parser.prompt_tokens, parser.completed) == (256, True)


# --- responses -----------------------------------------------------------------------------


def test_response_stream() -> None:
    parser, firsts = parse("response", True, events_of(STREAMS["response_text"][1]))
    assert firsts == [4]  # created, in_progress, item added, part added, then the first delta
    assert (parser.prompt_tokens, parser.completion_tokens, parser.total_tokens) == (11, 5, 16)
    assert (parser.finish_reason, parser.token_events, parser.completed) == ("stop", 3, True)
    assert (parser.model, parser.system_fingerprint, parser.tool_calls) == (MODEL, None, False)


def test_response_reasoning_delta_is_the_first_token() -> None:
    parser, firsts = parse("response", True, events_of(STREAMS["response_thinking"][1]))
    assert firsts == [3]
    assert parser.token_events == 3


def test_response_tool_call() -> None:
    parser, firsts = parse("response", True, events_of(STREAMS["response_tool"][1]))
    assert parser.tool_calls
    assert firsts == [3]
    assert (parser.finish_reason, parser.token_events) == ("tool_calls", 1)


def test_response_stream_cut() -> None:
    parser = whole("stream_response_cut")
    assert (parser.completed, parser.usage_seen, parser.token_events) == (False, False, 3)
    assert parser.model == MODEL


def test_response_at_the_output_limit_is_length() -> None:
    stream = ResponsesStream(max_output_tokens=5).start().text(TOKENS)
    parser = parse("response", True, [stream.completed([stream.message("x")], completion=5)])[0]
    assert parser.finish_reason == "length"
    stream = ResponsesStream(max_output_tokens=6).start().text(TOKENS)
    parser = parse("response", True, [stream.completed([stream.message("x")], completion=5)])[0]
    assert parser.finish_reason == "stop"


def test_response_incomplete() -> None:
    stream = ResponsesStream().start().text(["a"])
    details = {"reason": "max_output_tokens"}
    usage = {"input_tokens": 3, "output_tokens": 1, "total_tokens": 4}
    response = stream.response("incomplete", [], usage, incomplete_details=details)
    stream.event("response.incomplete", response=response)
    parser = parse("response", True, [stream.bytes()])[0]
    assert (parser.completed, parser.finish_reason, parser.total_tokens) == (True, "length", 4)


def test_response_failed() -> None:
    stream = ResponsesStream().start().text(["a"])
    error = {"code": "server_error", "message": "the runner crashed"}
    stream.event("response.failed", response=stream.response("failed", [], None, error=error))
    parser = parse("response", True, [stream.bytes()])[0]
    assert (parser.error, parser.error_code, parser.completed) == (
        "the runner crashed",
        "server_error",
        True,
    )
    assert parser.finish_reason is None


def test_response_error_event() -> None:
    stream = ResponsesStream().start()
    stream.event("error", code="rate_limit_exceeded", message="slow down", param=None)
    parser = parse("response", True, [stream.bytes()])[0]
    assert (parser.error, parser.error_code, parser.completed) == (
        "slow down",
        "rate_limit_exceeded",
        False,
    )


def test_response_events_without_names_use_their_type() -> None:
    data = STREAMS["response_tool"][1]
    unnamed = re.sub(rb"event: [^\n]*\n", b"", data)
    assert facts(parse("response", True, [unnamed])[0]) == facts(whole("stream_response_tool"))


def test_non_streamed_response() -> None:
    parser = whole("body_response")
    assert (parser.completed, parser.finish_reason, parser.model) == (True, "stop", MODEL)
    assert not parser.usage_seen
    obj = ResponsesStream().response(
        "completed",
        [ResponsesStream.function_call()],
        {"input_tokens": 7, "output_tokens": 9, "total_tokens": 16},
    )
    parser = parse("response", False, [body(obj)])[0]
    assert (parser.tool_calls, parser.finish_reason, parser.total_tokens) == (
        True,
        "tool_calls",
        16,
    )


def test_large_late_event_waits_for_resolve() -> None:
    stream = ResponsesStream().start().text(TOKENS)
    long_text = "word " * 5000
    data = stream.completed([stream.message(long_text)])
    parser = OpenAIParser("response", True)
    for event in events_of(data):
        parser.feed(event)
    parser.finish()
    assert not parser.usage_seen  # the 25 KB response.completed is not parsed yet
    assert parser.completed  # known from its name alone
    parser.resolve()
    assert (parser.usage_seen, parser.finish_reason) == (True, "stop")


def test_large_late_chat_chunk_keeps_the_order_of_the_events_after_it() -> None:
    big = chat_chunk(
        tool_calls=[{**TOOL_CALL, "function": {"name": "f", "arguments": "x" * 20000}}]
    )
    data = sse(chat_chunk("a")) + sse(big) + sse(chat_chunk("b")) + chat_stream([])
    parser = parse("chat", True, events_of(data))[0]
    assert (parser.tool_calls, parser.token_events, parser.finish_reason) == (True, 3, "stop")


# --- the cheap path --------------------------------------------------------------------------


def test_token_events_are_counted_without_parsing(monkeypatch: pytest.MonkeyPatch) -> None:
    parsed: list[bytes] = []
    loads = _openai._loads

    def counting(data: bytes) -> dict[str, Any] | None:
        parsed.append(data)
        return loads(data)

    monkeypatch.setattr(_openai, "_loads", counting)
    tokens = [f" w{i}" for i in range(200)] + ["a\\b", 'say "x"', "<tag>"]
    parser = parse("chat", True, events_of(chat_stream(tokens)))[0]
    assert parser.token_events == len(tokens)
    assert len(parsed) == 3  # the first token, the finish chunk, the usage chunk

    parsed.clear()
    parser = parse("completion", True, events_of(completion_stream(tokens)))[0]
    assert (parser.token_events, parser.total_tokens) == (len(tokens), 13)
    assert len(parsed) == 3

    parsed.clear()
    stream = ResponsesStream().start().text(tokens)
    parser = parse("response", True, events_of(stream.completed([])))[0]
    assert parser.token_events == len(tokens)
    assert len(parsed) == 2  # response.created, response.completed


def test_restamped_created_is_relearnt() -> None:
    chunks = [chat_chunk(f"t{i}", created=CREATED + i // 10) for i in range(50)]
    data = b"".join(sse(chunk) for chunk in chunks) + chat_stream([])
    assert whole_facts("chat", data) == facts(parse("chat", True, [data])[0])
    assert parse("chat", True, events_of(data))[0].token_events == 50


def whole_facts(kind: Kind, data: bytes) -> tuple[object, ...]:
    return facts(parse(kind, True, events_of(data))[0])


json_text = st.text(
    st.characters(codec="utf-8") | st.sampled_from(['"', "\\", "\n", "<", "&", "\u2028"]),
    max_size=8,
)


@settings(max_examples=200, deadline=None)
@given(tokens=st.lists(json_text, max_size=12), reasoning=st.lists(json_text, max_size=3))
def test_token_count_matches_a_full_parse(tokens: list[str], reasoning: list[str]) -> None:
    before = [chat_chunk(reasoning=piece) for piece in reasoning]
    data = chat_stream(tokens, before=before)
    parser = parse("chat", True, events_of(data))[0]
    expected = sum(1 for t in tokens if t) + sum(1 for r in reasoning if r)
    assert parser.token_events == expected
    assert parser.first_token_seen == bool(expected)
    assert (parser.total_tokens, parser.malformed) == (15, 0)
    text = completion_stream(tokens)
    assert parse("completion", True, events_of(text))[0].token_events == sum(1 for t in tokens if t)


# --- splits and framings ---------------------------------------------------------------------


def first_token_end(kind: Kind, data: bytes) -> int | None:
    """Where the first token-carrying event ends in a one-read-per-event body."""
    parser = OpenAIParser(kind, True)
    offset = 0
    for event in events_of(data):
        offset += len(event)
        if parser.feed(event):
            return offset
    return None


@pytest.mark.parametrize("name", sorted(ALL))
def test_every_single_split_gives_the_same_facts(name: str) -> None:
    kind, stream, data = ALL[name]
    expected = facts(parse(kind, stream, [data])[0])
    first_end = first_token_end(kind, data) if stream else None
    for cut in range(1, len(data)):
        parser, firsts = parse(kind, stream, [data[:cut], data[cut:]])
        assert facts(parser) == expected, f"{name} split at byte {cut}"
        if first_end is not None:
            assert firsts == [0 if cut >= first_end else 1], f"{name} split at byte {cut}"


@pytest.mark.parametrize("newline", [b"\r\n", b"\r"])
@pytest.mark.parametrize("name", sorted(STREAMS))
def test_line_ends_give_the_same_facts(name: str, newline: bytes) -> None:
    kind, data = STREAMS[name]
    expected = facts(parse(kind, True, [data])[0])
    framed = reframe(data, newline)
    assert facts(parse(kind, True, [framed])[0]) == expected
    for cut in range(1, len(framed), 7):
        assert facts(parse(kind, True, [framed[:cut], framed[cut:]])[0]) == expected


@settings(max_examples=300, deadline=None)
@given(
    name=st.sampled_from(sorted(ALL)),
    newline=st.sampled_from([b"\n", b"\r\n", b"\r"]),
    cuts=st.lists(st.integers(min_value=1, max_value=6000), max_size=40),
)
def test_any_splits_give_the_same_facts(name: str, newline: bytes, cuts: list[int]) -> None:
    kind, stream, data = ALL[name]
    expected = facts(parse(kind, stream, [data])[0])
    if stream:
        data = reframe(data, newline)
    assert facts(parse(kind, stream, split_at(data, cuts))[0]) == expected


def byte_splits(data: bytes) -> Iterator[list[bytes]]:
    yield [data[i : i + 1] for i in range(len(data))]
    yield events_of(data)


@pytest.mark.parametrize("name", ["stream_chat_awkward", "stream_response_thinking"])
def test_byte_by_byte(name: str) -> None:
    kind, stream, data = ALL[name]
    expected = facts(parse(kind, stream, [data])[0])
    for chunks in byte_splits(data):
        assert facts(parse(kind, stream, chunks)[0]) == expected


# --- nothing escapes -------------------------------------------------------------------------

kinds = st.sampled_from(["chat", "completion", "embedding", "response"])


@settings(max_examples=300, deadline=None)
@given(kind=kinds, stream=st.booleans(), chunks=st.lists(st.binary(max_size=80), max_size=20))
def test_arbitrary_bytes_never_raise(kind: Kind, stream: bool, chunks: list[bytes]) -> None:
    parser, firsts = parse(kind, stream, chunks)
    assert len(firsts) <= 1
    assert parser.token_events >= 0


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=10),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.sampled_from(
                [
                    *("choices", "delta", "content", "usage", "error", "finish_reason", "text"),
                    *("response", "status", "output", "type", "message", "prompt_tokens", "model"),
                ]
            ),
            children,
            max_size=4,
        )
    ),
    max_leaves=25,
)


@settings(max_examples=200, deadline=None)
@given(
    kind=kinds,
    events=st.lists(
        st.tuples(
            st.sampled_from(
                [
                    *(None, "error", "response.completed", "response.output_text.delta"),
                    *("response.output_item.added", "response.created"),
                ]
            ),
            json_values,
        ),
        max_size=8,
    ),
    cuts=st.lists(st.integers(1, 2000), max_size=10),
)
def test_arbitrary_json_events_never_raise(
    kind: Kind, events: list[tuple[str | None, object]], cuts: list[int]
) -> None:
    data = b"".join(
        (b"" if name is None else b"event: " + name.encode() + b"\n")
        + b"data: "
        + json.dumps(value).encode()
        + b"\n\n"
        for name, value in events
    )
    expected = facts(parse(kind, True, [data])[0])
    assert facts(parse(kind, True, split_at(data, cuts))[0]) == expected


def test_unknown_kind() -> None:
    bad: Callable[..., OpenAIParser] = OpenAIParser
    with pytest.raises(ValueError, match="unknown kind"):
        bad("messages", True)
