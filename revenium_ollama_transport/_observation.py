"""What one metered call did, collected on the caller's path as cheaply as possible.

The transport creates a ``CallObservation`` when a request leaves, feeds it the response
bytes as the caller reads them, and ends it exactly once, on the first of: end of body,
close, or an exception. Ending hands it to the sink; turning it into a record happens
later, in the delivery thread.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from contextvars import ContextVar
from typing import Any

from ._ids import format_id, take
from ._routes import NATIVE, Route
from ._wire._encoding import Decode, decoder_for
from ._wire._native import NativeParser
from ._wire._openai import OpenAIParser

# How a call ended, from the transport's point of view.
ENDED_EOF = "eof"  # the body was read to its end
ENDED_CLOSED = "closed"  # the caller closed the response before its end
ENDED_RAISED = "raised"  # the exchange raised (connection lost, timeout, cancelled)

Sink = Callable[["CallObservation"], None]
# Shown each read of the response body; a true result means a first token arrived.
Feed = Callable[[bytes], object]
StreamParser = NativeParser | OpenAIParser
# Reads of a stream kept (after its first token) before they are parsed on the caller's path.
KEEP_LIMIT = 512


# A call's own metadata (``usage_metadata=``), set by the call wrappers around one call.
call_metadata: ContextVar[Mapping[str, Any] | None] = ContextVar(
    "revenium_call_metadata", default=None
)


class _LastSyncCall(threading.local):
    observation: CallObservation | None = None


# The observation a transport made last, so that a call wrapper can tell the caller its
# transaction id: per thread for the sync transport (a thread-local costs a fraction of a
# context variable), per asyncio task for the async one.
last_sync_call = _LastSyncCall()
last_async_call: ContextVar[CallObservation | None] = ContextVar("revenium_last_call", default=None)


def ignore_bytes(data: bytes) -> bool:
    """A feeder for a call whose bytes are not parsed."""
    return False


class CallObservation:
    """One call's facts; the response's are None until ``response_started`` and ``end``."""

    __slots__ = (
        "body",
        "call_metadata",
        "content_encoding",
        "content_type",
        "decode",
        "ended",
        "exception",
        "header_metadata",
        "layers",
        "mono_end",
        "mono_first_token",
        "mono_headers",
        "mono_start",
        "parser",
        "request_body",
        "retry_number",
        "route",
        "sink",
        "status",
        "transaction",
        "url",
        "usage_injected",
        "wall_start",
    )

    def __init__(
        self,
        route: Route,
        request_body: bytes | None,
        layers: tuple[Mapping[str, Any], ...],
        header_metadata: str | None,
        url: Any,
        sink: Sink,
    ) -> None:
        self.route = route
        self.request_body = request_body
        self.layers = layers
        self.header_metadata = header_metadata
        self.url = url  # the request's URL object, read only off the caller's path
        self.sink = sink
        self.call_metadata: Mapping[str, Any] | None = None  # a call's usage_metadata=
        self.retry_number: int | None = None  # the openai SDK's attempt number
        self.usage_injected = False  # include_usage was asked for on the caller's behalf
        self.transaction: str | int = take()  # see transaction_id
        self.wall_start = time.time()
        self.mono_start = time.perf_counter()
        self.status: int | None = None
        self.content_type: bytes | None = None
        self.content_encoding: bytes | None = None
        self.mono_headers: float | None = None
        self.mono_first_token: float | None = None
        self.mono_end: float | None = None
        self.parser: StreamParser | None = None
        self.body: list[bytes] | None = None
        self.decode: Decode | None = None
        self.ended: str | None = None
        self.exception: BaseException | None = None

    def response_started(
        self, status: int, content_type: bytes | None, content_encoding: bytes | None
    ) -> Feed:
        """Notes the response head; returns the function to show each body read to.

        Only what must be known as it happens is done on the caller's path: a stream is
        parsed until its first token (for the time to first token), then its reads are
        kept, like a whole body's, and parsed in the delivery thread (``digest``).
        """
        self.mono_headers = time.perf_counter()
        self.status = status
        self.content_type = content_type
        self.content_encoding = content_encoding
        body: list[bytes] = []
        # streamed_response(), inlined: this runs on every call.
        if (
            status >= 400
            or content_type is None
            or (b"ndjson" if self.route.api == NATIVE else b"event-stream") not in content_type
        ):
            self.body = body
            return body.append
        decode = None
        if content_encoding is not None:
            decode = decoder_for(content_encoding.decode("latin-1"))
            if decode is None:
                return ignore_bytes  # an encoding we cannot read: recorded without usage
        route = self.route
        parser: StreamParser = (
            NativeParser() if route.api == NATIVE else OpenAIParser(route.kind, stream=True)
        )
        self.parser = parser
        self.body = body
        self.decode = decode
        if decode is None:
            return parser.feed
        return lambda data: parser.feed(decode(data))

    @property
    def transaction_id(self) -> str:
        """The call's transaction id, a UUID string (formatted on first use if need be)."""
        transaction = self.transaction
        if isinstance(transaction, int):
            transaction = self.transaction = format_id(transaction)
        return transaction

    def streamed_response(self) -> bool:
        """The response's content type is its API's stream type (NDJSON, or SSE for /v1)."""
        content_type = self.content_type
        if content_type is None:
            return False
        return (b"ndjson" if self.route.api == NATIVE else b"event-stream") in content_type

    def first_token(self) -> Feed:
        """Stamps the first token; returns the feed for the rest of the stream."""
        if self.mono_first_token is None:
            self.mono_first_token = time.perf_counter()
        return self._keep

    def _keep(self, data: bytes) -> None:
        body = self.body
        if body is None:
            return
        body.append(data)
        if len(body) >= KEEP_LIMIT:
            self.digest()  # bounds what a long stream holds, at the parser's cost per read

    def digest(self) -> None:
        """Shows the reads kept since the first token to the parser, in order."""
        parser, body = self.parser, self.body
        if parser is None or not body:
            return
        decode = self.decode
        for data in body:
            parser.feed(data if decode is None else decode(data))
        body.clear()

    def end(self, how: str, exception: BaseException | None = None) -> None:
        """Ends the call; every call after the first is ignored."""
        if self.ended is not None:
            return
        self.mono_end = time.perf_counter()
        self.ended = how
        self.exception = exception
        self.sink(self)
