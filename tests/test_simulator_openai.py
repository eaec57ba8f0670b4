"""OllamaSimulator's OpenAI-compatible routes, with the real openai SDK and on the raw wire."""

from __future__ import annotations

import base64
import re
import struct
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import orjson
import pytest

import revenium_ollama_transport as metering
from revenium_ollama_transport.testing import OllamaSimulator, SimulatedReply

from ._raw_http import RawResponse, raw_exchange

MESSAGES: list[Any] = [{"role": "user", "content": "Why is the sky blue?"}]
CHAT: dict[str, Any] = {"model": "llama3.2", "messages": MESSAGES}
TOOL_CALL = {"function": {"name": "get_weather", "arguments": {"city": "Paris", "days": 2}}}
CREATED_AT = "2025-01-02T03:04:05.123456789Z"
CREATED = 1735787045  # CREATED_AT in Unix seconds
CHAT_ID = re.compile(r"chatcmpl-([0-9]{1,3})")
CHAT_ID_BYTES = re.compile(rb"chatcmpl-[0-9]{1,3}")


@pytest.fixture(autouse=True, scope="module")
def bare_sdk() -> Iterator[None]:
    """These tests check the simulator against the SDK itself: no metering transport (which
    would, for one, add `stream_options`) in the openai clients made here."""
    metering.uninstall()
    try:
        yield
    finally:
        metering.install()


@pytest.fixture
def oai(sim: OllamaSimulator) -> Iterator[openai.OpenAI]:
    """The SDK as users configure it for Ollama (httpx2 underneath); no retries."""
    with openai.OpenAI(base_url=f"{sim.url}/v1/", api_key="ollama", max_retries=0) as client:
        yield client


@pytest.fixture(params=["httpx2", "httpx"])
def any_oai(request: pytest.FixtureRequest, sim: OllamaSimulator) -> Iterator[openai.OpenAI]:
    """The SDK on its default httpx2 client and on the legacy `http_client=httpx.Client()`."""
    extra: dict[str, Any] = {}
    if request.param == "httpx":
        extra["http_client"] = httpx.Client()
    base_url = f"{sim.url}/v1/"
    with openai.OpenAI(base_url=base_url, api_key="ollama", max_retries=0, **extra) as client:
        if request.param == "httpx":
            assert isinstance(client._client, httpx.Client)
        yield client


@pytest.fixture(scope="module")
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=5.0) as client:
        yield client


def stream_chat(client: openai.OpenAI, **kwargs: Any) -> list[Any]:
    return list(client.chat.completions.create(**CHAT, stream=True, **kwargs))


def post_raw(port: int, path: str, body: dict[str, Any]) -> RawResponse:
    """A POST of ``body`` as JSON, read back raw."""
    return raw_exchange(port, "POST", path, orjson.dumps(body))


# --- /v1/chat/completions ---


def test_chat_not_streamed(sim: OllamaSimulator, any_oai: openai.OpenAI) -> None:
    sim.reply = SimulatedReply(tokens=["Hi", " there"], prompt_eval_count=12, created_at=CREATED_AT)
    completion = any_oai.chat.completions.create(**CHAT)
    match = CHAT_ID.fullmatch(completion.id)
    assert match is not None and int(match.group(1)) < 999
    assert completion.object == "chat.completion"
    assert completion.created == CREATED
    assert completion.model == "llama3.2"  # echoed from the request
    assert completion.system_fingerprint == "fp_ollama"
    choice = completion.choices[0]
    assert (choice.message.role, choice.message.content) == ("assistant", "Hi there")
    assert choice.finish_reason == "stop"
    assert completion.usage is not None
    usage = completion.usage
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (12, 2, 14)


def test_chat_streamed_without_include_usage(sim: OllamaSimulator, any_oai: openai.OpenAI) -> None:
    sim.reply = SimulatedReply(tokens=["Hi", " there", "!"], model="llama3.2:3b")
    chunks = stream_chat(any_oai)
    assert all(chunk.choices for chunk in chunks)  # no usage chunk
    assert all(chunk.usage is None for chunk in chunks)
    assert len({chunk.id for chunk in chunks}) == 1 and CHAT_ID.fullmatch(chunks[0].id)
    assert {chunk.created for chunk in chunks} == {chunks[0].created}
    assert {chunk.model for chunk in chunks} == {"llama3.2:3b"}
    deltas = [chunk.choices[0].delta for chunk in chunks]
    assert [d.role for d in deltas] == ["assistant", None, None, None]
    assert [d.content for d in deltas] == ["Hi", " there", "!", None]
    assert [c.choices[0].finish_reason for c in chunks] == [None, None, None, "stop"]


def test_chat_streamed_with_include_usage(sim: OllamaSimulator, any_oai: openai.OpenAI) -> None:
    sim.reply = SimulatedReply(tokens=["a", "b"], prompt_eval_count=30, eval_count=7)
    chunks = stream_chat(any_oai, stream_options={"include_usage": True})
    with_usage = [chunk for chunk in chunks if chunk.usage is not None]
    assert with_usage == [chunks[-1]]
    assert chunks[-1].choices == []
    assert all(chunk.choices for chunk in chunks[:-1])
    assert chunks[-2].choices[0].finish_reason == "stop"
    usage = chunks[-1].usage
    assert usage is not None
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (30, 7, 37)


@pytest.mark.parametrize(
    ("reply", "finish"),
    [
        (SimulatedReply(done_reason="length"), "length"),
        (SimulatedReply(done_reason=None), "stop"),  # FinishChunk: cmp.Or(reason, "stop")
        (SimulatedReply(tool_calls=[TOOL_CALL]), "tool_calls"),
        (SimulatedReply(tokens=[], tool_calls=[TOOL_CALL], tool_calls_on="final"), "tool_calls"),
    ],
)
def test_chat_stream_finish_reasons(
    sim: OllamaSimulator, oai: openai.OpenAI, reply: SimulatedReply, finish: str
) -> None:
    sim.reply = reply
    chunks = stream_chat(oai)
    assert chunks[-1].choices[0].finish_reason == finish
    assert chunks[-1].choices[0].delta.content is None
    calls = [call for chunk in chunks for call in chunk.choices[0].delta.tool_calls or ()]
    assert len(calls) == (1 if reply.tool_calls else 0)
    if calls:
        assert re.fullmatch(r"call_[a-z0-9]{8}", calls[0].id or "")
        assert (calls[0].index, calls[0].type) == (0, "function")
        assert calls[0].function is not None
        assert calls[0].function.name == "get_weather"
        assert calls[0].function.arguments == '{"city":"Paris","days":2}'


def test_chat_tool_calls_not_streamed(sim: OllamaSimulator, oai: openai.OpenAI) -> None:
    call = {"id": "call_fixed01", **TOOL_CALL}
    sim.reply = SimulatedReply(tokens=[], tool_calls=[call])
    choice = oai.chat.completions.create(**CHAT).choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.tool_calls is not None
    tool_call = choice.message.tool_calls[0]
    assert tool_call.id == "call_fixed01" and tool_call.type == "function"
    assert tool_call.function.arguments == '{"city":"Paris","days":2}'


def test_chat_thinking_is_reasoning(sim: OllamaSimulator, http: httpx.Client) -> None:
    sim.reply = SimulatedReply(thinking=["Hmm"], tokens=["Blue"])
    whole = http.post(f"{sim.url}/v1/chat/completions", json=CHAT).json()
    assert whole["choices"][0]["message"] == {
        "role": "assistant",
        "content": "Blue",
        "reasoning": "Hmm",
    }
    payloads = post_raw(sim.port, "/v1/chat/completions", {**CHAT, "stream": True}).data()
    deltas = [p["choices"][0]["delta"] for p in payloads[:-1]]
    assert deltas == [
        {"role": "assistant", "content": "", "reasoning": "Hmm"},
        {"content": "Blue"},
        {},
    ]


# --- /v1/completions ---


def test_completion_not_streamed(sim: OllamaSimulator, any_oai: openai.OpenAI) -> None:
    sim.reply = SimulatedReply(tokens=["Once", " upon"], prompt_eval_count=4)
    completion = any_oai.completions.create(model="llama3.2", prompt="Tell a story")
    assert re.fullmatch(r"cmpl-[0-9]{1,3}", completion.id)
    assert (completion.object, completion.model) == ("text_completion", "llama3.2")
    assert completion.system_fingerprint == "fp_ollama"
    assert completion.choices[0].text == "Once upon"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (4, 2)


@pytest.mark.parametrize("include_usage", [False, True])
def test_completion_streamed(sim: OllamaSimulator, oai: openai.OpenAI, include_usage: bool) -> None:
    sim.reply = SimulatedReply(tokens=["Once", " upon"], prompt_eval_count=4)
    options: Any = {"include_usage": True} if include_usage else openai.omit
    chunks = list(
        oai.completions.create(model="m", prompt="p", stream=True, stream_options=options)
    )
    texts = [chunk.choices[0].text for chunk in chunks if chunk.choices]
    assert texts == ["Once", " upon", ""]  # the done chunk carries finish_reason, no text
    assert [c.choices[0].finish_reason for c in chunks if c.choices] == [None, None, "stop"]
    if not include_usage:
        assert all(chunk.choices and chunk.usage is None for chunk in chunks)
        return
    # Ollama's quirk: a zero usage on every chunk, the real one on a last `choices: []` chunk.
    real = [c for c in chunks if c.usage is not None and c.usage.total_tokens]
    assert real == [chunks[-1]] and chunks[-1].choices == []
    assert all(c.usage is not None and c.usage.total_tokens == 0 for c in chunks[:-1])
    assert chunks[-1].usage is not None
    assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == (4, 2)


# --- /v1/embeddings ---


def test_embeddings(sim: OllamaSimulator, any_oai: openai.OpenAI) -> None:
    sim.reply = SimulatedReply(prompt_eval_count=9, embedding_dims=4)
    single = any_oai.embeddings.create(model="nomic-embed-text", input="hello")
    assert single.object == "list" and single.model == "nomic-embed-text"
    assert [(d.object, d.index, len(d.embedding)) for d in single.data] == [("embedding", 0, 4)]
    assert (single.usage.prompt_tokens, single.usage.total_tokens) == (9, 9)
    several = any_oai.embeddings.create(
        model="nomic-embed-text", input=["a", "b"], encoding_format="float"
    )
    assert [d.index for d in several.data] == [0, 1]


def test_embeddings_base64_and_refusals(sim: OllamaSimulator, http: httpx.Client) -> None:
    url = f"{sim.url}/v1/embeddings"
    floats = http.post(url, json={"model": "e", "input": "x"}).json()["data"][0]["embedding"]
    answer = http.post(url, json={"model": "e", "input": "x", "encoding_format": "base64"})
    packed = base64.b64decode(answer.json()["data"][0]["embedding"])
    unpacked = struct.unpack(f"<{len(floats)}f", packed)
    assert unpacked == pytest.approx(floats, rel=1e-6)
    tokens = http.post(url, json={"model": "e", "input": [[1, 2, 3]]})  # no token arrays
    assert tokens.status_code == 400
    assert tokens.json()["error"]["message"] == "invalid input type"
    empty = http.post(url, json={"model": "e", "input": []})
    assert (empty.status_code, empty.json()["error"]["message"]) == (400, "invalid input")
    bad = http.post(url, json={"model": "e", "input": "x", "encoding_format": "int8"})
    assert bad.status_code == 400 and "encoding_format" in bad.json()["error"]["message"]


# --- /v1/responses ---


def test_responses_not_streamed(sim: OllamaSimulator, any_oai: openai.OpenAI) -> None:
    sim.reply = SimulatedReply(tokens=["Rayleigh", " scattering"], prompt_eval_count=11)
    response = any_oai.responses.create(model="llama3.2", input="Why is the sky blue?")
    assert re.fullmatch(r"resp_[0-9]{1,6}", response.id)
    assert (response.status, response.model) == ("completed", "llama3.2")
    assert response.output_text == "Rayleigh scattering"
    assert response.usage is not None
    usage = response.usage
    assert (usage.input_tokens, usage.output_tokens, usage.total_tokens) == (11, 2, 13)


def test_responses_streamed(sim: OllamaSimulator, any_oai: openai.OpenAI) -> None:
    sim.reply = SimulatedReply(tokens=["Ray", "leigh"], prompt_eval_count=11, eval_count=5)
    events = list(any_oai.responses.create(model="llama3.2", input="why", stream=True))
    assert [event.type for event in events] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [event.sequence_number for event in events] == list(range(len(events)))
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    assert deltas == ["Ray", "leigh"]
    completed = events[-1]
    assert completed.type == "response.completed"
    assert completed.response.output_text == "Rayleigh"
    assert completed.response.usage is not None
    usage = completed.response.usage
    assert (usage.input_tokens, usage.output_tokens, usage.total_tokens) == (11, 5, 16)
    in_flight = [e for e in events[:-1] if e.type in ("response.created", "response.in_progress")]
    assert all(e.response.usage is None for e in in_flight)


def test_responses_stream_with_thinking_and_tool_call(
    sim: OllamaSimulator, oai: openai.OpenAI
) -> None:
    sim.reply = SimulatedReply(thinking=["Let me", " check"], tokens=[], tool_calls=[TOOL_CALL])
    events = list(oai.responses.create(model="m", input="weather?", stream=True))
    assert [event.type for event in events] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.reasoning_summary_text.delta",
        "response.reasoning_summary_text.delta",
        "response.reasoning_summary_text.done",
        "response.output_item.done",
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]
    completed = events[-1]
    assert completed.type == "response.completed"
    kinds = [item.type for item in completed.response.output]
    assert kinds == ["reasoning", "function_call"]
    call = completed.response.output[1]
    assert call.type == "function_call"
    assert call.arguments == '{"city":"Paris","days":2}'


def test_responses_stream_framing(sim: OllamaSimulator) -> None:
    sim.reply = SimulatedReply(tokens=["x"])
    raw = post_raw(sim.port, "/v1/responses", {"model": "m", "input": "hi", "stream": True})
    assert raw.status == 200 and raw.complete
    assert raw.headers["content-type"] == "text/event-stream"
    assert raw.headers["cache-control"] == "no-cache"
    assert b"[DONE]" not in raw.body
    # Go flushes after each event: one HTTP chunk per event.
    assert all(re.fullmatch(rb"event: [a-z_.]+\ndata: \{.*\}\n\n", c) for c in raw.chunks)
    first = orjson.loads(raw.chunks[0].split(b"\ndata: ", 1)[1])
    assert list(first) == ["response", "sequence_number", "type"]  # a Go map: keys sorted
    assert list(first["response"]) == sorted(first["response"])


# --- /v1/models ---


def test_models(sim: OllamaSimulator, any_oai: openai.OpenAI) -> None:
    models = any_oai.models.list().data
    assert [(m.id, m.object, m.owned_by) for m in models] == [
        ("llama3.2:latest", "model", "library"),
        ("nomic-embed-text:latest", "model", "library"),
    ]
    retrieved = any_oai.models.retrieve("llama3.2")
    assert (retrieved.id, retrieved.created) == ("llama3.2", models[0].created)
    with pytest.raises(openai.NotFoundError) as missing:
        any_oai.models.retrieve("nope")
    assert missing.value.body == {
        "message": "model 'nope:latest' not found",
        "type": "not_found_error",
        "param": None,
        "code": None,
    }


# --- errors and faults ---


def test_status_404_raises_not_found(sim: OllamaSimulator, oai: openai.OpenAI) -> None:
    sim.queue(SimulatedReply(status=404))
    with pytest.raises(openai.NotFoundError) as not_found:
        oai.chat.completions.create(**CHAT, stream=True)
    assert not_found.value.status_code == 404
    assert not_found.value.type == "not_found_error" and not_found.value.code is None
    assert not_found.value.body == {
        "message": 'model "llama3.2" not found, try pulling it first',
        "type": "not_found_error",
        "param": None,
        "code": None,
    }
    sim.queue(SimulatedReply(status=404, error="model 'x' not found"))
    raw = post_raw(sim.port, "/v1/chat/completions", CHAT)
    assert (raw.status, raw.headers["content-type"]) == (404, "application/json")
    assert raw.body == (
        b'{"error":{"message":"model \'x\' not found","type":"not_found_error",'
        b'"param":null,"code":null}}\n'
    )


def test_middleware_refusals_are_gin_json(sim: OllamaSimulator, http: httpx.Client) -> None:
    answer = http.post(f"{sim.url}/v1/chat/completions", json={"model": "m", "messages": []})
    assert answer.status_code == 400
    assert answer.headers["content-type"] == "application/json; charset=utf-8"
    assert answer.content == (
        b'{"error":{"message":"[] is too short - \'messages\'",'
        b'"type":"invalid_request_error","param":null,"code":null}}'
    )
    assert http.post(f"{sim.url}/v1/responses", content=b"").json()["error"]["message"] == "EOF"
    assert not sim.requests[-1].body


@pytest.mark.parametrize("include_usage", [False, True])
def test_mid_stream_error_ends_the_chat_stream_early(
    sim: OllamaSimulator, any_oai: openai.OpenAI, include_usage: bool
) -> None:
    sim.reply = SimulatedReply(tokens=["a", "b", "c"], error_after=2)
    options: Any = {"include_usage": True} if include_usage else openai.omit
    chunks = stream_chat(any_oai, stream_options=options)  # no exception: the SDK just stops
    # Ollama converts the `{"error"}` line like an empty native chunk, with no model.
    assert [c.choices[0].delta.content for c in chunks] == ["a", "b", ""]
    assert [c.model for c in chunks] == ["llama3.2", "llama3.2", ""]
    assert all(c.choices[0].finish_reason is None and c.usage is None for c in chunks)
    raw = post_raw(sim.port, "/v1/chat/completions", {**CHAT, "stream": True})
    assert raw.status == 200 and raw.complete  # a normal end of the body...
    assert b"[DONE]" not in raw.body and len(raw.data()) == 3  # ...without finish or [DONE]


def test_mid_stream_error_ends_completions_and_responses(
    sim: OllamaSimulator, oai: openai.OpenAI
) -> None:
    sim.reply = SimulatedReply(tokens=["a", "b", "c"], error_after=1)
    body = {"model": "m", "prompt": "p", "stream": True, "stream_options": {"include_usage": True}}
    payloads = post_raw(sim.port, "/v1/completions", body).data()
    assert [(p["choices"][0]["text"], p["model"]) for p in payloads] == [("a", "m"), ("", "")]
    assert all(p["usage"]["total_tokens"] == 0 for p in payloads)
    events = list(oai.responses.create(model="m", input="x", stream=True))
    assert [e.type for e in events][-1] == "response.output_text.delta"  # no completed event


def test_error_before_streaming_is_a_500(sim: OllamaSimulator, oai: openai.OpenAI) -> None:
    sim.reply = SimulatedReply(error_after=0, error="boom")
    with pytest.raises(openai.InternalServerError) as failed:
        stream_chat(oai)
    assert failed.value.body == {
        "message": "boom",
        "type": "api_error",
        "param": None,
        "code": None,
    }
    with pytest.raises(openai.InternalServerError):
        oai.responses.create(model="m", input="x")  # not streamed: any error_after is a 500


@pytest.mark.parametrize("stream", [True, False])
def test_drop_after_makes_the_sdk_raise(
    sim: OllamaSimulator, oai: openai.OpenAI, stream: bool
) -> None:
    sim.reply = SimulatedReply(tokens=["a", "b", "c"], drop_after=2)
    seen: list[str | None] = []
    with pytest.raises(openai.APIConnectionError):
        if stream:
            for chunk in oai.chat.completions.create(**CHAT, stream=True):
                seen.append(chunk.choices[0].delta.content)
        else:
            oai.chat.completions.create(**CHAT)
    assert seen == (["a", "b"] if stream else [])


def test_drop_after_every_chunk_still_omits_the_terminator(sim: OllamaSimulator) -> None:
    sim.reply = SimulatedReply(tokens=["a"], drop_after=99)
    raw = post_raw(sim.port, "/v1/chat/completions", {**CHAT, "stream": True})
    assert raw.body.endswith(b"data: [DONE]\n\n") and not raw.complete


def test_gzip_and_timeout(sim: OllamaSimulator, oai: openai.OpenAI) -> None:
    sim.reply = SimulatedReply(tokens=["x", "y"], gzip=True)
    assert "".join(c.choices[0].delta.content or "" for c in stream_chat(oai)) == "xy"
    assert oai.embeddings.create(model="e", input="x").data[0].index == 0
    raw = post_raw(sim.port, "/v1/chat/completions", {**CHAT, "stream": True})
    assert raw.headers["content-encoding"] == "gzip" and raw.chunks[0][:2] == b"\x1f\x8b"
    sim.reply = SimulatedReply(first_byte_delay=30.0)
    with pytest.raises(openai.APITimeoutError):
        oai.with_options(timeout=0.2).chat.completions.create(**CHAT)


# --- exact framing ---


def test_exact_bytes_of_a_small_stream(sim: OllamaSimulator) -> None:
    sim.reply = SimulatedReply(tokens=["Hi", "!"], prompt_eval_count=3, created_at=CREATED_AT)
    body = {**CHAT, "stream": True, "stream_options": {"include_usage": True}}
    raw = post_raw(sim.port, "/v1/chat/completions", body)
    assert raw.status == 200 and raw.complete
    assert raw.headers["content-type"] == "text/event-stream"
    assert raw.headers["transfer-encoding"] == "chunked"
    match = CHAT_ID_BYTES.match(raw.body, len(b'data: {"id":"'))
    assert match is not None
    head = (
        b'data: {"id":"%s","object":"chat.completion.chunk","created":1735787045,'
        b'"model":"llama3.2","system_fingerprint":"fp_ollama","choices":'
    ) % match.group(0)
    expected = [
        head + b'[{"index":0,"delta":{"role":"assistant","content":"Hi"},"finish_reason":null}]}'
        b"\n\n",
        head + b'[{"index":0,"delta":{"content":"!"},"finish_reason":null}]}\n\n',
        head
        + b'[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\n'
        + head
        + b'[],"usage":{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5}}\n\n'
        b"data: [DONE]\n\n",
    ]
    assert raw.chunks == expected  # one HTTP chunk per native chunk, as Go flushes


@pytest.mark.parametrize("line_end", ["\r\n", "\r"])
def test_other_line_endings(sim: OllamaSimulator, oai: openai.OpenAI, line_end: str) -> None:
    sim.reply = SimulatedReply(tokens=["a", "b"], sse_line_end=line_end)
    raw = post_raw(sim.port, "/v1/chat/completions", {**CHAT, "stream": True})
    end = line_end.encode()
    assert raw.body.endswith(b"data: [DONE]" + end + end) and b"\n\n" not in raw.body
    assert raw.body.count(end + end) == 4
    chunks = stream_chat(oai, stream_options={"include_usage": True})
    assert [c.choices[0].delta.content for c in chunks if c.choices] == ["a", "b", None]
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 2
    events = list(oai.responses.create(model="m", input="x", stream=True))
    assert events[-1].type == "response.completed"


def test_requests_are_recorded(sim: OllamaSimulator, oai: openai.OpenAI) -> None:
    stream_chat(oai, stream_options={"include_usage": True})
    request = sim.wait_for_requests(1)[-1]
    assert (request.method, request.path) == ("POST", "/v1/chat/completions")
    assert request.headers["authorization"] == "Bearer ollama"
    assert request.json["stream_options"] == {"include_usage": True}
    assert request.json["messages"] == MESSAGES


def test_sse_line_end_is_checked() -> None:
    with pytest.raises(ValueError, match="sse_line_end"):
        SimulatedReply(sse_line_end="\n\n")
