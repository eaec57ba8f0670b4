"""Recorded native bodies, split at every byte, through the transport over MockTransport:
the caller's chunks are the server's chunks, and the record does not depend on the split."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from revenium_ollama_transport import AsyncReveniumTransport, ReveniumTransport
from revenium_ollama_transport._observation import KEEP_LIMIT

from . import _streams
from ._sinks import RecordingSink

ROUTES = {
    "chat_stream": ("/api/chat", "application/x-ndjson"),
    "generate_stream": ("/api/generate", "application/x-ndjson"),
    "tool_stream": ("/api/chat", "application/x-ndjson"),
    "thinking_stream": ("/api/chat", "application/x-ndjson"),
    "error_stream": ("/api/chat", "application/x-ndjson"),
    "non_streamed_chat": ("/api/chat", "application/json; charset=utf-8"),
    "embed": ("/api/embed", "application/json; charset=utf-8"),
    "legacy_embeddings": ("/api/embeddings", "application/json; charset=utf-8"),
}


class ChunkStream(httpx.SyncByteStream, httpx.AsyncByteStream):
    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = chunks

    def __iter__(self) -> Iterator[bytes]:
        yield from self.chunks

    async def __aiter__(self):  # type: ignore[no-untyped-def]
        for chunk in self.chunks:
            yield chunk


def mock_for(chunks: list[bytes], content_type: str) -> httpx.MockTransport:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            200, headers={"content-type": content_type}, stream=ChunkStream(chunks)
        )

    return httpx.MockTransport(handler)


def splits(body: bytes) -> Iterator[list[bytes]]:
    yield [body]
    for cut in range(1, len(body)):
        yield [body[:cut], body[cut:]]
    yield [body[i : i + 1] for i in range(len(body))]


def read_through(
    chunks: list[bytes], path: str, content_type: str, sink: RecordingSink
) -> list[bytes]:
    transport = ReveniumTransport(mock_for(chunks, content_type), sink=sink)
    with httpx.Client(transport=transport, base_url="http://ollama.test") as client:
        with client.stream("POST", path, json={"model": "qwen2.5:0.5b", "stream": True}) as r:
            return list(r.iter_raw())


@pytest.mark.parametrize("name", sorted(ROUTES))
def test_bytes_unchanged_and_record_identical_at_every_split(name: str) -> None:
    body = _streams.ALL_BODIES[name]
    path, content_type = ROUTES[name]
    reference = RecordingSink()
    assert read_through([body], path, content_type, reference) == [body]
    [expected] = reference.stable_wires()
    assert expected["stopReason"] in ("END", "ERROR")
    for chunks in splits(body):
        sink = RecordingSink()
        got = read_through(chunks, path, content_type, sink)
        assert got == chunks, f"{name}: caller saw different chunks"
        assert sink.stable_wires() == [expected], f"{name}: split {[len(c) for c in chunks]}"


@pytest.mark.parametrize("name", sorted(ROUTES))
async def test_async_bytes_unchanged_and_record_identical(name: str) -> None:
    body = _streams.ALL_BODIES[name]
    path, content_type = ROUTES[name]
    reference = RecordingSink()
    read_through([body], path, content_type, reference)
    [expected] = reference.stable_wires()
    for cut in range(1, len(body), 7):
        chunks = [body[:cut], body[cut:]]
        sink = RecordingSink()
        transport = AsyncReveniumTransport(mock_for(chunks, content_type), sink=sink)
        async with httpx.AsyncClient(transport=transport, base_url="http://ollama.test") as client:
            async with client.stream("POST", path, json={"model": "qwen2.5:0.5b"}) as r:
                got = [chunk async for chunk in r.aiter_raw()]
        assert got == chunks
        assert sink.stable_wires() == [expected]


def test_a_long_stream_is_digested_as_it_goes_and_counted_exactly() -> None:
    tokens = 3 * KEEP_LIMIT + 7
    body = b"".join(_streams.chat_line(f"t{i}") for i in range(tokens))
    chunks = body.splitlines(keepends=True)  # one read per chunk, as Ollama sends them
    sink = RecordingSink()
    transport = ReveniumTransport(mock_for(chunks, "application/x-ndjson"), sink=sink)
    with httpx.Client(transport=transport, base_url="http://ollama.test") as client:
        with client.stream("POST", "/api/chat", json={"model": "m"}) as response:
            for index, _ in enumerate(response.iter_raw()):
                if index == tokens - 1:
                    break
    [observation] = sink.observations
    kept = observation.body
    assert kept is not None
    assert len(kept) < KEEP_LIMIT  # what the caller's call holds stays bounded
    [record] = sink.records()
    assert record.wire["stopReason"] == "CANCELLED"
    assert record.wire["outputTokenCount"] == tokens


@pytest.mark.parametrize(
    "after_first",
    [0, 1, KEEP_LIMIT - 1, KEEP_LIMIT, KEEP_LIMIT + 1, 2 * KEEP_LIMIT, 2 * KEEP_LIMIT + 3],
)
def test_a_stream_read_to_its_end_at_every_length_around_the_digest(after_first: int) -> None:
    # After the first token reads are kept KEEP_LIMIT at a time: a stream that ends on,
    # just before or just after such a boundary passes whole and is counted whole.
    lines = [_streams.chat_line(f"t{i}") for i in range(1 + after_first)]
    lines.append(_streams.final_line(output=len(lines)))
    sink = RecordingSink()
    assert read_through(lines, "/api/chat", "application/x-ndjson", sink) == lines
    [observation] = sink.observations
    assert observation.body is not None and len(observation.body) <= KEEP_LIMIT
    [record] = sink.records()
    assert record.wire["stopReason"] == "END"
    assert record.wire["outputTokenCount"] == len(lines) - 1


# --- OpenAI-compatible streams (SSE), through the transport -----------------------------

CHAT_SSE = (
    b'data: {"id":"chatcmpl-7","object":"chat.completion.chunk","created":1,"model":"m",'
    b'"system_fingerprint":"fp_ollama","choices":[{"index":0,"delta":{"role":"assistant",'
    b'"content":"Hi"},"finish_reason":null}]}\n\n'
    b'data: {"id":"chatcmpl-7","object":"chat.completion.chunk","created":1,"model":"m",'
    b'"system_fingerprint":"fp_ollama","choices":[{"index":0,"delta":{"content":" you"},'
    b'"finish_reason":null}]}\n\n'
    b'data: {"id":"chatcmpl-7","object":"chat.completion.chunk","created":1,"model":"m",'
    b'"system_fingerprint":"fp_ollama","choices":[{"index":0,"delta":{},'
    b'"finish_reason":"stop"}]}\n\n'
)
USAGE_SSE = (
    b'data: {"id":"chatcmpl-7","object":"chat.completion.chunk","created":1,"model":"m",'
    b'"system_fingerprint":"fp_ollama","choices":[],"usage":{"prompt_tokens":5,'
    b'"completion_tokens":2,"total_tokens":7}}\n\n'
)
DONE_SSE = b"data: [DONE]\n\n"


def stream_through(chunks: list[bytes], sink: RecordingSink, stream_options: object) -> bytes:
    """A streamed chat completion through the transport; the bytes the caller read."""
    transport = ReveniumTransport(mock_for(chunks, "text/event-stream"), sink=sink)
    body: dict[str, object] = {"model": "m", "messages": [], "stream": True}
    if stream_options is not None:
        body["stream_options"] = stream_options
    with httpx.Client(transport=transport, base_url="http://ollama.test") as client:
        with client.stream("POST", "/v1/chat/completions", json=body) as response:
            return b"".join(response.iter_raw())


@pytest.mark.parametrize("line_end", [b"\n", b"\r\n", b"\r"])
def test_sse_usage_event_taken_out_and_record_identical_at_every_split(line_end: bytes) -> None:
    served = (CHAT_SSE + USAGE_SSE + DONE_SSE).replace(b"\n", line_end)
    wanted = (CHAT_SSE + DONE_SSE).replace(b"\n", line_end)
    reference = RecordingSink()
    assert stream_through([served], reference, None) == wanted
    [expected] = reference.stable_wires()
    assert (expected["inputTokenCount"], expected["outputTokenCount"]) == (5, 2)
    assert expected["stopReason"] == "END"
    for chunks in splits(served):
        sink = RecordingSink()
        assert stream_through(chunks, sink, None) == wanted, [len(c) for c in chunks]
        assert sink.stable_wires() == [expected]


def test_sse_stream_that_asked_for_usage_passes_chunk_for_chunk() -> None:
    served = CHAT_SSE + USAGE_SSE + DONE_SSE
    for cut in range(1, len(served), 5):
        chunks = [served[:cut], served[cut:]]
        sink = RecordingSink()
        transport = ReveniumTransport(mock_for(chunks, "text/event-stream"), sink=sink)
        body = {"model": "m", "stream": True, "stream_options": {"include_usage": True}}
        with httpx.Client(transport=transport, base_url="http://ollama.test") as client:
            with client.stream("POST", "/v1/chat/completions", json=body) as response:
                assert list(response.iter_raw()) == chunks
        [record] = sink.stable_wires()
        assert record["inputTokenCount"] == 5


def _sse_chunk(delta: bytes, finish: bytes = b"null") -> bytes:
    return (
        b'data: {"id":"chatcmpl-7","object":"chat.completion.chunk","created":1,"model":"m",'
        b'"system_fingerprint":"fp_ollama","choices":[{"index":0,"delta":' + delta + b","
        b'"finish_reason":' + finish + b"}]}\n\n"
    )


@pytest.mark.parametrize(
    "after_first", [0, 1, KEEP_LIMIT - 2, KEEP_LIMIT - 1, KEEP_LIMIT, 2 * KEEP_LIMIT + 3]
)
def test_sse_usage_taken_out_at_every_length_around_the_digest(after_first: int) -> None:
    # After the first token, whole chunk reads pass without the stripper and are kept
    # KEEP_LIMIT at a time: however long the stream, the caller gets every chunk as it
    # came but the usage event, and the record counts every one.
    first = _sse_chunk(b'{"role":"assistant","content":"t"}')
    tokens = [_sse_chunk(b'{"content":" t%d"}' % i) for i in range(after_first)]
    usage = USAGE_SSE.replace(
        b'"completion_tokens":2', b'"completion_tokens":%d' % (len(tokens) + 1)
    )
    served = [first, *tokens, _sse_chunk(b"{}", b'"stop"'), usage, DONE_SSE]
    sink = RecordingSink()
    transport = ReveniumTransport(mock_for(served, "text/event-stream"), sink=sink)
    body = {"model": "m", "messages": [], "stream": True}
    with httpx.Client(transport=transport, base_url="http://ollama.test") as client:
        with client.stream("POST", "/v1/chat/completions", json=body) as response:
            assert list(response.iter_raw()) == [c for c in served if c is not usage]
    [observation] = sink.observations
    assert observation.body is not None and len(observation.body) <= KEEP_LIMIT
    [record] = sink.stable_wires()
    assert record["stopReason"] == "END"
    assert (record["inputTokenCount"], record["outputTokenCount"]) == (5, len(tokens) + 1)


def test_a_server_that_sends_no_usage_is_recorded_with_zero_tokens_and_counted() -> None:
    from revenium_ollama_transport._stats import counters

    before = counters.get("stream_without_usage")
    sink = RecordingSink()
    assert stream_through([CHAT_SSE + DONE_SSE], sink, None) == CHAT_SSE + DONE_SSE
    [record] = sink.stable_wires()
    assert (record["inputTokenCount"], record["outputTokenCount"], record["stopReason"]) == (
        0,
        0,
        "END",
    )
    assert counters.get("stream_without_usage") == before + 1


def test_a_stream_cut_before_done_is_an_error_read_to_the_end() -> None:
    sink = RecordingSink()
    stream_through([CHAT_SSE], sink, {"include_usage": True})
    [record] = sink.stable_wires()
    assert record["stopReason"] == "ERROR"
    assert record["outputTokenCount"] == 2  # the content chunks that arrived
