"""The metering transports: forward every request untouched, tee metered responses.

One pair of classes serves both HTTP families (``httpx`` and its fork ``httpx2``): the
family is read off each request, and the response keeps its own family's types.
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import AsyncIterator, Iterator
from itertools import filterfalse, islice
from time import perf_counter
from typing import TYPE_CHECKING, Any, TypeVar

import httpx

from . import _sink
from ._metadata import MetadataError, as_layer, check, current_layers, header_layer, strict
from ._observation import (
    ENDED_CLOSED,
    ENDED_EOF,
    ENDED_RAISED,
    KEEP_LIMIT,
    CallObservation,
    Feed,
    Sink,
    call_metadata,
    ignore_bytes,
    last_async_call,
    last_sync_call,
)
from ._routes import OPENAI, route_for_url
from ._sink import _default as _default_sink
from ._sink import submit_default
from ._stats import counters, internal_failure
from ._wire._openai_request import rewrite
from ._wire._usage_strip import UsageStripper, is_whole_choices_event

METADATA_HEADER = "x-revenium-metadata"
_METADATA_HEADER_KEY = METADATA_HEADER.encode()
# The openai SDK's own retries: each attempt is a record, numbered from this header.
_RETRY_HEADER = "x-stainless-retry-count"
_RETRY_HEADER_KEY = _RETRY_HEADER.encode()


def _end(observation: CallObservation, how: str, exception: BaseException | None = None) -> None:
    try:
        observation.end(how, exception)
    except Exception:
        internal_failure("end")


def _feed_failed(observation: CallObservation) -> None:
    internal_failure("feed")
    observation.parser = None


class _SyncCall(CallObservation):
    """A sync call's observation, which is also its response's body stream: it yields the
    inner stream's chunks unchanged, showing each to ``feed``. One object per call.

    With a ``stripper`` (see ``_wire._usage_strip``) it also takes out the usage event the
    caller did not ask for, and bytes then pass event by event instead of read by read.
    """

    # Set when the response arrives (``_tee``): the body stream it wraps, and for a stream
    # (feed not None) what is shown its reads.
    inner: Any = None
    feed: Feed | None
    stripper: UsageStripper | None

    def __iter__(self) -> Iterator[bytes]:
        feed = self.feed
        if feed is None:
            # A whole body (JSON, an error): every read kept for the delivery thread to parse.
            keep = self.body.append  # type: ignore[union-attr]  # _tee made it with feed None
            try:
                for chunk in self.inner:  # most often a single read: no need for filterfalse
                    keep(chunk)
                    yield chunk
            except BaseException as exc:
                _end(self, ENDED_RAISED, exc)
                raise
            try:  # _end(), inlined: once per call
                self.end(ENDED_EOF)
            except Exception:
                internal_failure("end")
            return
        if self.stripper is not None:
            yield from self._stripped(feed, self.stripper)
            return
        inner = iter(self.inner)
        try:
            # The chunks, unchanged: shown to the feed until the first token, then kept.
            for chunk in inner:
                try:
                    first = feed(chunk)
                except Exception:
                    _feed_failed(self)
                    feed, first = ignore_bytes, False
                if first:
                    self.first_token()
                    yield chunk
                    break
                yield chunk
            else:
                try:  # _end(), inlined: once per call
                    self.end(ENDED_EOF)
                except Exception:
                    internal_failure("end")
                return
            # After the first token every read is kept for the delivery thread to parse
            # (CallObservation.digest). filterfalse() passes on each read that keep()
            # (list.append: None) was shown, all in C: no Python step per read here.
            body = self.body
            if body is not None:
                keep = body.append
                while True:
                    yield from filterfalse(keep, islice(inner, KEEP_LIMIT))
                    if len(body) < KEEP_LIMIT:
                        break  # the stream ended within these reads
                    try:
                        self.digest()  # bounds what a long stream holds
                    except Exception:
                        _feed_failed(self)
                        break
            yield from inner  # what is left after a parser failure (else nothing)
        except BaseException as exc:
            _end(self, ENDED_RAISED, exc)
            raise
        _end(self, ENDED_EOF)

    def _stripped(self, feed: Feed, stripper: UsageStripper) -> Iterator[bytes]:
        """The chunks less the usage event the caller did not ask for."""
        inner = iter(self.inner)
        try:
            for chunk in inner:  # until the first token: every read shown to the parser
                try:
                    first = feed(chunk)
                except Exception:
                    _feed_failed(self)
                    feed, first = ignore_bytes, False
                if first:
                    self.first_token()
                passed = stripper.feed(chunk)
                if passed:
                    yield passed
                if first:
                    break
            else:
                if tail := stripper.finish():
                    yield tail
                _end(self, ENDED_EOF)
                return
            # After it, every read is kept for the delivery thread to parse, as in
            # __iter__; a read that is one whole chunk with choices (most of them) is
            # passed on here, without a call to the stripper.
            body: list[bytes] = self.body  # type: ignore[assignment]  # the parser's reads
            keep: Feed = body.append
            for chunk in inner:
                keep(chunk)
                if len(body) >= KEEP_LIMIT:
                    try:
                        self.digest()  # bounds what a long stream holds
                    except Exception:
                        _feed_failed(self)
                        body.clear()
                        keep = ignore_bytes
                if stripper.idle and is_whole_choices_event(chunk) is not None:
                    yield chunk
                    continue
                passed = stripper.feed(chunk)
                if passed:
                    yield passed
            if tail := stripper.finish():
                yield tail
        except BaseException as exc:
            _end(self, ENDED_RAISED, exc)
            raise
        _end(self, ENDED_EOF)

    def close(self) -> None:
        try:
            inner = self.inner
            if inner is not None:
                inner.close()
                # Not kept while the record waits for the delivery thread: a network
                # stream holds the connection pool's request objects, which would then
                # live long enough for the garbage collector's oldest generation.
                self.inner = None
        finally:
            if self.ended is None:
                _end(self, ENDED_CLOSED)

    def __del__(self) -> None:
        # A response dropped without close() still gets its one record, when collected.
        if self.ended is None:
            _end(self, ENDED_CLOSED)


class _AsyncCall(CallObservation):
    """The asyncio counterpart of ``_SyncCall``."""

    inner: Any = None
    feed: Feed | None
    stripper: UsageStripper | None

    async def __aiter__(self) -> AsyncIterator[bytes]:
        feed = self.feed
        body = self.body
        stripper = self.stripper
        try:
            async for chunk in self.inner:
                if feed is None:  # a whole body: every read kept
                    body.append(chunk)  # type: ignore[union-attr]  # made by _tee
                    yield chunk
                    continue
                try:
                    if feed(chunk):
                        feed = self.first_token()
                except Exception:
                    _feed_failed(self)
                    feed = ignore_bytes
                if stripper is None:
                    yield chunk
                else:
                    passed = stripper.feed(chunk)
                    if passed:
                        yield passed
            if stripper is not None and (tail := stripper.finish()):
                yield tail
        except BaseException as exc:
            _end(self, ENDED_RAISED, exc)
            raise
        _end(self, ENDED_EOF)

    async def aclose(self) -> None:
        try:
            inner = self.inner
            if inner is not None:
                await inner.aclose()
                self.inner = None  # see _SyncCall.close
        finally:
            if self.ended is None:
                _end(self, ENDED_CLOSED)

    def __del__(self) -> None:
        if self.ended is None:
            _end(self, ENDED_CLOSED)


class _Family:
    """An HTTP library family (httpx or httpx2): its module and our call types for it."""

    __slots__ = ("async_call", "module", "sync_call")

    def __init__(self, module_name: str) -> None:
        self.module: Any = importlib.import_module(module_name)
        # The client asserts that a response stream is its own family's byte stream.
        self.sync_call: type[_SyncCall] = type(
            "SyncCall", (_SyncCall, self.module.SyncByteStream), {}
        )
        self.async_call: type[_AsyncCall] = type(
            "AsyncCall", (_AsyncCall, self.module.AsyncByteStream), {}
        )


_families: dict[type, _Family] = {}
_families_lock = threading.Lock()


def _family_of(request: Any) -> _Family:
    request_type = type(request)
    family = _families.get(request_type)
    if family is None:
        with _families_lock:
            family = _families.get(request_type)
            if family is None:
                family = _Family(request_type.__module__.partition(".")[0])
                _families[request_type] = family
    return family


def _has_header(headers: Any, lower_name: bytes) -> bool:
    """``name in headers``, about 4x faster on the caller's path.

    httpx and httpx2 keep headers as (raw, lower-cased, value) triples in ``_list``; a
    version without it takes the public, slower lookup.
    """
    triples = getattr(headers, "_list", None)
    if triples is None:
        return lower_name.decode() in headers
    for triple in triples:  # noqa: SIM110 - quicker than any() or map() over so few
        if triple[1] == lower_name:
            return True
    return False


def _content_headers(headers: Any) -> tuple[bytes | None, bytes | None]:
    """(Content-Type, Content-Encoding) in one pass over the headers (see ``_has_header``);
    an ``identity`` encoding is no encoding."""
    triples = getattr(headers, "_list", None)
    if triples is None:
        content_type, encoding = headers.get("content-type"), headers.get("content-encoding")
        return (
            None if content_type is None else content_type.encode("latin-1"),
            None if encoding is None else encoding.encode("latin-1"),
        )
    content_type = encoding = None
    for _, name, value in triples:
        if name == b"content-type":
            content_type = value
        elif name == b"content-encoding":
            encoding = value
    if encoding is not None and encoding.strip().lower() == b"identity":
        encoding = None
    return content_type, encoding


_Call = TypeVar("_Call", _SyncCall, _AsyncCall)


def _observe(request: Any, sink: Sink, call_type: type[_Call]) -> tuple[_Call | None, Any]:
    """Starts the observation of a metered request (None for any other, or if anything
    goes wrong); returns it with the request to forward, which is ``request`` itself
    unless the body had to change (see ``_wire._openai_request``). Takes the metadata
    header off the request so that Ollama never sees it. Runs on every call: one function,
    no helper it can do without."""
    try:
        headers = request.headers
        header_metadata: str | None = None
        if _has_header(headers, _METADATA_HEADER_KEY):
            header_metadata = headers[METADATA_HEADER]
            del headers[METADATA_HEADER]
            if strict():
                check(header_layer(header_metadata))
        url = request.url
        route = route_for_url(request.method, url)
        if route is None or not _sink.metering_enabled:
            return None, request
        try:
            body: bytes | None = request.content
        except Exception:  # a streaming request body: nothing to read without consuming it
            body = None
        if sink is submit_default:  # the default sink as it is now: one call less at the end
            sink = _default_sink[0]
        metadata = call_metadata.get()
        observation = call_type(route, body, current_layers(), header_metadata, metadata, url, sink)
        if route.api == OPENAI:
            request = _openai_request(observation, request, body)
        return observation, request
    except MetadataError:
        raise  # strict mode asked for it
    except Exception:
        internal_failure("request")
        return None, request


def _openai_request(observation: CallObservation, request: Any, body: bytes | None) -> Any:
    """The OpenAI SDK's extras: metadata in the body, usage asked for, its retry count."""
    headers = request.headers
    if _has_header(headers, _RETRY_HEADER_KEY):
        count = headers[_RETRY_HEADER].strip()
        observation.retry_number = int(count) if count.isdigit() else None
    if not body:
        return request
    change = rewrite(observation.route.kind, body)
    if change.metadata is not None:
        layer = as_layer(change.metadata)
        if layer:
            check(layer)
            observation.call_metadata = layer
    observation.usage_injected = change.usage_injected
    if change.body is None:
        return request
    observation.request_body = change.body
    kept = [(name, value) for name, value in headers.raw if name.lower() != b"content-length"]
    return type(request)(
        request.method,
        request.url,
        headers=kept,
        content=change.body,
        extensions=request.extensions,
    )


def _tee(call: _SyncCall | _AsyncCall, response: Any) -> None:
    """Notes the response head and makes the call its body stream, around the one it had;
    on any failure, leaves the response be."""
    try:
        call.mono_headers = perf_counter()
        call.status = status = response.status_code
        content_type, encoding = _content_headers(response.headers)
        call.content_type = content_type
        if encoding is not None:
            call.content_encoding = encoding
        feed: Feed | None = None
        body: list[bytes] | None = None
        stripper = None
        # find, not "in": bytes' "in" first tries its operand as an int, which raises.
        if status >= 400 or content_type is None or content_type.find(call.route.stream_type) < 0:
            body = call.body = []  # a whole body (feed None): its reads kept, parsed later
        else:
            feed = call.stream_feed(encoding)
            if call.usage_injected and call.parser is not None:
                if encoding is None:
                    stripper = UsageStripper(call.route.kind)
                else:  # compressed bytes cannot be cut at events: let the usage event through
                    counters.add("usage_event_not_removed")
        # A response built from bytes (MockTransport, ASGI/WSGI apps) arrives already read.
        # (is_stream_consumed first: looking for an attribute that is not there is slow.)
        content = getattr(response, "_content", None) if response.is_stream_consumed else None
        if content is not None:
            if body is not None:
                body.append(content)
            elif feed is not None and feed(content):
                call.first_token()
            _end(call, ENDED_EOF)
            return
        call.feed = feed
        call.stripper = stripper
        call.inner = response.stream
        response.stream = call
    except Exception:
        internal_failure("response")


class _Inners:
    """The inner transport a user gave, or the default one made for each family."""

    __slots__ = ("_defaults", "_factory", "_given", "_lock", "_options")

    def __init__(self, given: Any | None, options: dict[str, Any], factory: str) -> None:
        if given is not None and options:
            raise TypeError("transport options apply to the default inner transport only")
        self._given = given
        self._options = options
        self._factory = factory
        self._defaults: dict[int, Any] = {}
        self._lock = threading.Lock()

    def for_family(self, family: _Family) -> Any:
        if self._given is not None:
            return self._given
        inner = self._defaults.get(id(family))
        if inner is None:
            with self._lock:
                inner = self._defaults.get(id(family))
                if inner is None:
                    inner = getattr(family.module, self._factory)(**self._options)
                    self._defaults[id(family)] = inner
        return inner

    def all(self) -> list[Any]:
        with self._lock:
            return [self._given] if self._given is not None else list(self._defaults.values())


if TYPE_CHECKING:
    import httpx2

    # For type checkers, the transports are of both families, as they are at run time.
    class _SyncBase(httpx.BaseTransport, httpx2.BaseTransport):  # type: ignore[misc]
        ...

    class _AsyncBase(httpx.AsyncBaseTransport, httpx2.AsyncBaseTransport):  # type: ignore[misc]
        ...

else:  # httpx2 is optional, and neither family's client checks a transport's type
    _SyncBase = httpx.BaseTransport
    _AsyncBase = httpx.AsyncBaseTransport


class ReveniumTransport(_SyncBase):
    """A sync transport that meters Ollama calls and forwards everything unchanged.

    ``inner`` is the transport that does the HTTP exchange, of the same family as the
    client (``httpx.HTTPTransport`` or ``httpx2.HTTPTransport``). Without it, one is made
    per family with ``transport_options`` (``verify``, ``cert``, ``limits``, ``proxy``,
    ``retries``, ``http2``...): a client given a transport ignores its own such settings.
    """

    def __init__(
        self, inner: Any | None = None, *, sink: Sink | None = None, **transport_options: Any
    ) -> None:
        self._inners = _Inners(inner, transport_options, "HTTPTransport")
        self._given = inner
        self._sink: Sink = sink if sink is not None else submit_default

    def handle_request(self, request: Any) -> Any:
        family = _family_of(request)
        observation, request = _observe(request, self._sink, family.sync_call)
        inner = self._given
        if inner is None:
            inner = self._inners.for_family(family)
        if observation is None:
            return inner.handle_request(request)
        last_sync_call.transaction = observation.transaction
        try:
            response = inner.handle_request(request)
        except BaseException as exc:
            _end(observation, ENDED_RAISED, exc)
            raise
        _tee(observation, response)
        return response

    def close(self) -> None:
        for inner in self._inners.all():
            inner.close()


class AsyncReveniumTransport(_AsyncBase):
    """The asyncio counterpart of ``ReveniumTransport``; same arguments."""

    def __init__(
        self, inner: Any | None = None, *, sink: Sink | None = None, **transport_options: Any
    ) -> None:
        self._inners = _Inners(inner, transport_options, "AsyncHTTPTransport")
        self._given = inner
        self._sink: Sink = sink if sink is not None else submit_default

    async def handle_async_request(self, request: Any) -> Any:
        family = _family_of(request)
        observation, request = _observe(request, self._sink, family.async_call)
        inner = self._given
        if inner is None:
            inner = self._inners.for_family(family)
        if observation is None:
            return await inner.handle_async_request(request)
        last_async_call.set(observation.transaction)
        try:
            response = await inner.handle_async_request(request)
        except BaseException as exc:
            _end(observation, ENDED_RAISED, exc)
            raise
        _tee(observation, response)
        return response

    async def aclose(self) -> None:
        for inner in self._inners.all():
            await inner.aclose()
