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
    transaction: str | int | None = None


# The transaction (see ``CallObservation.transaction``) of the call a transport started
# last, so that a call wrapper can tell the caller its id: per thread for the sync
# transport (a thread-local costs a fraction of a context variable), per asyncio task for
# the async one. Not the observation itself: that would keep a response dropped unclosed
# alive, and its record unsent, until the thread's next call.
last_sync_call = _LastSyncCall()
last_async_call: ContextVar[str | int | None] = ContextVar("revenium_last_call", default=None)


def ignore_bytes(data: bytes) -> bool:
    """A feeder for a call whose bytes are not parsed."""
    return False


class CallObservation:
    """One call's facts.

    A call stores only what it learns: what it may never learn (a response, a first token,
    an exception) is a class default until then. On the caller's path every store counts,
    and a call learns most of these only later, if at all. The delivery thread reads them.
    """

    # What the OpenAI SDK's calls add (``_transport._openai_request``).
    retry_number: int | None = None  # the openai SDK's attempt number
    usage_injected = False  # include_usage was asked for on the caller's behalf
    # The response head (``_transport._tee``).
    status: int | None = None
    content_type: bytes | None = None
    content_encoding: bytes | None = None
    mono_headers: float | None = None
    # The response body: its reads kept, and a stream's parser and decoder.
    body: list[bytes] | None = None
    parser: StreamParser | None = None
    decode: Decode | None = None
    mono_first_token: float | None = None
    # The end (``end``); ``ended`` is set at the start, being read on the caller's path.
    exception: BaseException | None = None
    mono_end: float | None = None

    def __init__(
        self,
        route: Route,
        request_body: bytes | None,
        layers: tuple[Mapping[str, Any], ...],
        header_metadata: str | None,
        call_metadata: Mapping[str, Any] | None,
        url: Any,
        sink: Sink,
    ) -> None:
        self.route = route
        self.request_body = request_body
        self.layers = layers
        self.header_metadata = header_metadata
        self.call_metadata = call_metadata  # a call's usage_metadata=
        self.url = url  # the request's URL object, read only off the caller's path
        self.sink = sink
        # A ready id, or the random bits of one (see transaction_id).
        self.transaction: str | int = take()
        self.wall_start = time.time()
        self.mono_start = time.perf_counter()
        # Set here, not left to a class default: reading one of those (not in the instance)
        # is a slow, unspecialised lookup, and the caller's path reads this one.
        self.ended: str | None = None

    def stream_feed(self, content_encoding: bytes | None) -> Feed:
        """For a streamed response (its API's stream type): the function to show each body
        read to until the first token.

        Only what must be known as it happens is done on the caller's path: a stream is
        parsed until its first token (for the time to first token), then its reads are
        kept, like a whole body's, and parsed in the delivery thread (``digest``).
        """
        decode = None
        if content_encoding is not None:
            decode = decoder_for(content_encoding.decode("latin-1"))
            if decode is None:
                return ignore_bytes  # an encoding we cannot read: recorded without usage
        self.body = []
        route = self.route
        parser: StreamParser = (
            NativeParser() if route.api == NATIVE else OpenAIParser(route.kind, stream=True)
        )
        self.parser = parser
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
        return content_type is not None and content_type.find(self.route.stream_type) >= 0

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
        if exception is not None:
            self.exception = exception
        self.sink(self)
