"""How the simulator puts an answer on the wire, whole or streamed, with the reply's faults.

Shared by the native routes (NDJSON lines) and the OpenAI-compatible ones (SSE frames): both write
a sequence of *steps*, one per chunk Ollama's handler produced. A step is what Ollama writes for
that chunk, as the HTTP chunks it flushes: one NDJSON line; the SSE frames of a chat or completion
chunk together (Go writes them and flushes once); one HTTP chunk per Responses event (Go flushes
after each). `chunk_delay` separates steps, so `drop_after` and `error_after` count the same
runner chunks on every route.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol

from ._reply import SimulatedReply
from ._server import _Exchange
from ._wire import go_time

Doc = dict[str, Any]
Step = Sequence[bytes]  # the HTTP chunks written for one runner chunk


class Framing(Protocol):
    """How one route family encodes Ollama's native documents (one instance per request: the
    OpenAI ones keep stream state)."""

    @property
    def stream_headers(self) -> Mapping[str, str]: ...

    def whole(self, doc: Doc) -> tuple[bytes, Mapping[str, str]]:
        """A native non-streamed answer -> (body, headers)."""
        ...

    def step(self, doc: Doc) -> Step:
        """A native chunk (or the `{"error": ...}` line of a failed stream) -> HTTP chunks."""
        ...

    def error(self, status: int, message: str) -> tuple[bytes, Mapping[str, str]]:
        """An error answered before any byte of the body -> (body, headers)."""
        ...


def stamp(doc: Doc, created_at: str | None) -> Doc:
    """Set `created_at` as the document goes out, like Ollama (or to the reply's fixed value)."""
    if "created_at" in doc:
        doc["created_at"] = created_at or go_time()
    return doc


def gzip_bytes(data: bytes) -> bytes:
    compressor = zlib.compressobj(wbits=31)  # 31: gzip header and trailer
    return compressor.compress(data) + compressor.flush()


def send_body(
    exchange: _Exchange,
    reply: SimulatedReply,
    status: int,
    body: bytes,
    headers: Mapping[str, str],
) -> None:
    """A whole (non-streamed) answer, with the reply's encoding and drop fault applied."""
    headers = dict(headers)
    if reply.gzip:
        body = gzip_bytes(body)
        headers["Content-Encoding"] = "gzip"
    if reply.drop_after is not None:
        exchange.send_partial(status, body, headers)
    else:
        exchange.send(status, body, headers)


def send_error(
    exchange: _Exchange,
    reply: SimulatedReply,
    framing: Framing,
    status: int,
    message: str,
) -> None:
    body, headers = framing.error(status, message)
    send_body(exchange, reply, status, body, headers)


def answer_inference(
    exchange: _Exchange,
    reply: SimulatedReply,
    framing: Framing,
    *,
    streamed: bool,
    chunks: Callable[[], tuple[list[Doc], Doc]],
    whole: Callable[[], Doc],
    error_message: str,
) -> None:
    """Answer a chat or generate request from the native documents, whatever the framing.

    `error_after`: 0, or any value when not streaming, answers 500 (nothing was written yet);
    otherwise the native `{"error": ...}` line follows the first N chunks and the stream ends
    normally, with no done chunk: each framing turns that line into what Ollama writes for it.
    """
    if reply.error_after is not None and (reply.error_after == 0 or not streamed):
        send_error(exchange, reply, framing, 500, error_message)
        return
    if not streamed:
        body, headers = framing.whole(stamp(whole(), reply.created_at))
        send_body(exchange, reply, 200, body, headers)
        return
    docs, final = chunks()
    if reply.error_after is not None:
        docs = [*docs[: reply.error_after], {"error": error_message}]
    else:
        docs = [*docs, final]
    steps = (framing.step(stamp(doc, reply.created_at)) for doc in docs)
    Streamer(exchange, reply, framing.stream_headers).run(steps)


class Streamer:
    """Writes steps, each of its parts as one flushed HTTP chunk, applying the reply's faults."""

    def __init__(
        self, exchange: _Exchange, reply: SimulatedReply, headers: Mapping[str, str]
    ) -> None:
        self._exchange = exchange
        self._reply = reply
        self._headers = dict(headers)
        self._compressor = zlib.compressobj(wbits=31) if reply.gzip else None

    def run(self, steps: Iterable[Step]) -> None:
        """Write the steps; an iterator is consumed lazily, so each step is built as it goes
        out (that is when Ollama stamps times)."""
        exchange, reply = self._exchange, self._reply
        headers = dict(self._headers)
        if self._compressor is not None:
            headers["Content-Encoding"] = "gzip"
        exchange.start_chunked(200, headers)
        for index, frames in enumerate(steps):
            if reply.drop_after is not None and index >= reply.drop_after:
                break
            if index and not exchange.sleep(reply.chunk_delay):
                exchange.abort()
                return
            for part in frames:
                self._write(part)
        if reply.drop_after is not None:
            exchange.abort()  # no terminating zero-length chunk
            return
        if self._compressor is not None:
            exchange.write_chunk(self._compressor.flush())
        exchange.end_chunked()

    def _write(self, part: bytes) -> None:
        if self._compressor is not None:
            part = self._compressor.compress(part) + self._compressor.flush(zlib.Z_SYNC_FLUSH)
        self._exchange.write_chunk(part)
