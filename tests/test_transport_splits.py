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
