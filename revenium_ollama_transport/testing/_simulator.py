"""`OllamaSimulator`: a local HTTP server that answers like Ollama's native and OpenAI-compatible
APIs on the wire (the latter in `_openai_routes.py`)."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import orjson

from . import _ollama_bodies as bodies
from ._openai_routes import MODEL_ROUTE_PREFIX, OpenAIRoutes
from ._reply import ReceivedRequest, SimulatedReply
from ._server import _Exchange, _LoopbackServer
from ._streaming import Doc, Step, Streamer, answer_inference, send_body, stamp
from ._wire import go_json

_JSON = "application/json; charset=utf-8"  # gin's c.JSON
_NDJSON = "application/x-ndjson"
_PLAIN = "text/plain; charset=utf-8"  # gin's c.String


def _parse(body: bytes) -> Any:
    if not body:
        return None
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        return None


class _NativeFraming:
    """The native API: NDJSON lines, `{"error": ...}` objects, gin's JSON content type."""

    stream_headers: Mapping[str, str] = {"Content-Type": _NDJSON}

    def whole(self, doc: Doc) -> tuple[bytes, Mapping[str, str]]:
        return go_json(doc), {"Content-Type": _JSON}

    def step(self, doc: Doc) -> Step:
        return [go_json(doc) + b"\n"]  # a late error too (json.Encoder.Encode in streamResponse)

    def error(self, status: int, message: str) -> tuple[bytes, Mapping[str, str]]:
        return go_json({"error": message}), {"Content-Type": _JSON}


_NATIVE = _NativeFraming()


class OllamaSimulator(OpenAIRoutes, _LoopbackServer):
    """A real HTTP/1.1 server on 127.0.0.1 (ephemeral port) that speaks Ollama's native API and
    its OpenAI-compatible one.

    Metered routes (`/api/chat`, `/api/generate`, `/api/embed`, `/api/embeddings`) answer from the
    next queued `SimulatedReply`, else from `reply`. The pass-through routes (`/api/tags`,
    `/api/ps`, `/api/version`, `/api/show`, `/api/pull`, `/api/delete`, `/api/copy`, `/`) always
    succeed with fixed, realistic bodies and consume no reply.

    The OpenAI-compatible routes (`/v1/chat/completions`, `/v1/completions`, `/v1/embeddings`,
    `/v1/responses`) answer from the same replies, converted as Ollama converts its native
    answers; `/v1/models` and `/v1/models/{model}` consume no reply.

    `address` is where it listens: 127.0.0.1 on an ephemeral port unless given (`revenium-ollama
    simulate` serves on a chosen one).
    """

    def __init__(
        self,
        reply: SimulatedReply | None = None,
        *,
        models: Sequence[str] = ("llama3.2:latest", "nomic-embed-text:latest"),
        version: str = "0.33.0",
        address: tuple[str, int] = ("127.0.0.1", 0),
    ) -> None:
        super().__init__(address=address)
        self._cond = threading.Condition()
        self._reply = reply if reply is not None else SimulatedReply()
        self._queue: deque[SimulatedReply] = deque()
        self._requests: list[ReceivedRequest] = []
        self.models = list(models)  # listed by /api/tags and /api/ps
        self.version = version

    @property
    def reply(self) -> SimulatedReply:
        """The answer used when no queued reply is left."""
        with self._cond:
            return self._reply

    @reply.setter
    def reply(self, reply: SimulatedReply) -> None:
        with self._cond:
            self._reply = reply

    def queue(self, *replies: SimulatedReply) -> None:
        """Answer the next metered requests with these, in order, before falling back to `reply`."""
        with self._cond:
            self._queue.extend(replies)

    @property
    def requests(self) -> list[ReceivedRequest]:
        """Every request received (all routes), in arrival order."""
        with self._cond:
            return list(self._requests)

    def wait_for_requests(self, n: int, timeout: float = 5.0) -> list[ReceivedRequest]:
        """Wait until at least `n` requests have arrived; TimeoutError otherwise."""
        with self._cond:
            if not self._cond.wait_for(lambda: len(self._requests) >= n, timeout):
                seen = [f"{r.method} {r.path}" for r in self._requests]
                raise TimeoutError(
                    f"OllamaSimulator: expected {n} request(s) within {timeout}s, "
                    f"got {len(seen)}: {seen}"
                )
            return list(self._requests)

    def clear(self) -> None:
        """Forget received requests and queued replies (`reply` is kept)."""
        with self._cond:
            self._requests.clear()
            self._queue.clear()

    def _next_reply(self) -> SimulatedReply:
        with self._cond:
            return self._queue.popleft() if self._queue else self._reply

    def _take_reply(self, exchange: _Exchange) -> SimulatedReply | None:
        reply = self._next_reply()
        if not exchange.sleep(reply.first_byte_delay):
            exchange.abort()
            return None
        return reply

    def _wake_waiters(self) -> None:
        with self._cond:
            self._cond.notify_all()

    # --- routing ---

    def _handle(self, exchange: _Exchange) -> None:
        request = exchange.request
        payload = _parse(request.body)
        with self._cond:
            self._requests.append(
                ReceivedRequest(
                    method=request.method,
                    path=request.path,
                    headers=request.headers,
                    body=request.body,
                    json=payload,
                )
            )
            self._cond.notify_all()
        route = _ROUTES.get(request.route)
        if route is None and _is_model_route(request.route):
            route = _MODEL_ROUTE
        if route is None:  # gin's NoRoute answer
            exchange.send(404, b"404 page not found", {"Content-Type": "text/plain"})
            return
        methods, handler = route
        if request.method not in methods:  # gin with HandleMethodNotAllowed
            exchange.send(405, b"405 method not allowed", {"Content-Type": "text/plain"})
            return
        handler(self, exchange, payload)

    def _root(self, exchange: _Exchange, payload: Any) -> None:
        exchange.send(200, b"Ollama is running", {"Content-Type": _PLAIN})

    def _version(self, exchange: _Exchange, payload: Any) -> None:
        _send_json(exchange, 200, {"version": self.version})

    def _tags(self, exchange: _Exchange, payload: Any) -> None:
        _send_json(exchange, 200, bodies.tags(self.models))

    def _ps(self, exchange: _Exchange, payload: Any) -> None:
        _send_json(exchange, 200, bodies.ps(self.models, time.time_ns()))

    def _show(self, exchange: _Exchange, payload: Any) -> None:
        name = _model_of(payload)
        if name is None:
            _send_json(exchange, 400, {"error": "model is required"})
            return
        _send_json(exchange, 200, bodies.show(name))

    def _pull(self, exchange: _Exchange, payload: Any) -> None:
        name = _model_of(payload)
        if name is None:
            _send_json(exchange, 400, {"error": "invalid model name"})
            return
        progress = bodies.pull_progress(name)
        if isinstance(payload, dict) and payload.get("stream") is False:
            # waitForStream: only the last progress, as plain application/json
            _send_json(exchange, 200, progress[-1], "application/json")
            return
        Streamer(exchange, SimulatedReply(), _NATIVE.stream_headers).run(
            _NATIVE.step(doc) for doc in progress
        )

    def _empty_ok(self, exchange: _Exchange, payload: Any) -> None:
        # /api/delete and /api/copy write no body on success.
        exchange.send(200)

    # --- metered routes ---

    def _chat(self, exchange: _Exchange, payload: Any) -> None:
        self._inference(exchange, payload, bodies.chat_stream, bodies.chat_full)

    def _generate(self, exchange: _Exchange, payload: Any) -> None:
        raw = isinstance(payload, dict) and payload.get("raw") is True

        def stream(reply: SimulatedReply, model: str) -> tuple[list[bodies.Doc], bodies.Doc]:
            return bodies.generate_stream(reply, model, raw)

        def full(reply: SimulatedReply, model: str) -> bodies.Doc:
            return bodies.generate_full(reply, model, raw)

        self._inference(exchange, payload, stream, full)

    def _inference(
        self,
        exchange: _Exchange,
        payload: Any,
        stream: Callable[[SimulatedReply, str], tuple[list[bodies.Doc], bodies.Doc]],
        full: Callable[[SimulatedReply, str], bodies.Doc],
    ) -> None:
        started = self._begin(exchange, payload)
        if started is None:
            return
        reply, model = started
        answer_inference(
            exchange,
            reply,
            _NATIVE,
            streamed=payload.get("stream") is not False,  # absent or null: the server streams
            chunks=lambda: stream(reply, model),
            whole=lambda: full(reply, model),
            error_message=bodies.error_text(reply, 500, model),
        )

    def _embed(self, exchange: _Exchange, payload: Any) -> None:
        raw = payload.get("input") if isinstance(payload, dict) else None
        if isinstance(raw, str):
            inputs = [raw] if raw else []
        elif isinstance(raw, list) and all(isinstance(item, str) for item in raw):
            inputs = list(raw)
        elif raw is None:
            inputs = []
        else:
            _send_json(exchange, 400, {"error": "invalid input type"})
            return
        started = self._begin(exchange, payload)
        if started is not None:
            reply, model = started
            _answer(exchange, reply, 200, bodies.embed(reply, model, inputs))

    def _embeddings(self, exchange: _Exchange, payload: Any) -> None:
        started = self._begin(exchange, payload)
        if started is not None:
            reply, _ = started
            prompt = payload.get("prompt")
            text = prompt if isinstance(prompt, str) else ""
            _answer(exchange, reply, 200, bodies.embeddings_legacy(reply, text))

    def _begin(self, exchange: _Exchange, payload: Any) -> tuple[SimulatedReply, str] | None:
        """Check the request, take a reply, apply its delay and status; None when answered."""
        if not exchange.request.body:
            _send_json(exchange, 400, {"error": "missing request body"})
            return None
        if not isinstance(payload, dict):
            _send_json(exchange, 400, {"error": "invalid request body: expected a JSON object"})
            return None
        requested = _model_of(payload)
        if requested is None:
            _send_json(exchange, 400, {"error": "model is required"})
            return None
        reply = self._take_reply(exchange)
        if reply is None:
            return None
        if reply.status >= 400:
            error = {"error": bodies.error_text(reply, reply.status, requested)}
            _answer(exchange, reply, reply.status, error)
            return None
        return reply, reply.model if reply.model is not None else requested


_Route = Callable[[OllamaSimulator, _Exchange, Any], None]

_ROUTES: dict[str, tuple[frozenset[str], _Route]] = {
    "/": (frozenset({"GET", "HEAD"}), OllamaSimulator._root),
    "/api/version": (frozenset({"GET", "HEAD"}), OllamaSimulator._version),
    "/api/tags": (frozenset({"GET", "HEAD"}), OllamaSimulator._tags),
    "/api/ps": (frozenset({"GET"}), OllamaSimulator._ps),
    "/api/show": (frozenset({"POST"}), OllamaSimulator._show),
    "/api/pull": (frozenset({"POST"}), OllamaSimulator._pull),
    "/api/delete": (frozenset({"DELETE"}), OllamaSimulator._empty_ok),
    "/api/copy": (frozenset({"POST"}), OllamaSimulator._empty_ok),
    "/api/chat": (frozenset({"POST"}), OllamaSimulator._chat),
    "/api/generate": (frozenset({"POST"}), OllamaSimulator._generate),
    "/api/embed": (frozenset({"POST"}), OllamaSimulator._embed),
    "/api/embeddings": (frozenset({"POST"}), OllamaSimulator._embeddings),
    "/v1/chat/completions": (frozenset({"POST"}), OllamaSimulator._v1_chat),
    "/v1/completions": (frozenset({"POST"}), OllamaSimulator._v1_completions),
    "/v1/embeddings": (frozenset({"POST"}), OllamaSimulator._v1_embeddings),
    "/v1/responses": (frozenset({"POST"}), OllamaSimulator._v1_responses),
    "/v1/models": (frozenset({"GET"}), OllamaSimulator._v1_models),
}
_MODEL_ROUTE = (frozenset({"GET"}), OllamaSimulator._v1_model)  # /v1/models/:model


def _is_model_route(route: str) -> bool:
    name = route.removeprefix(MODEL_ROUTE_PREFIX)
    return route.startswith(MODEL_ROUTE_PREFIX) and bool(name) and "/" not in name


def _model_of(payload: Any) -> str | None:
    if not isinstance(payload, dict):
        return None
    for key in ("model", "name"):  # `name` is the deprecated spelling Ollama still reads
        value = payload.get(key)
        if isinstance(value, str) and value:
            return value
    return None


def _send_json(exchange: _Exchange, status: int, doc: object, content_type: str = _JSON) -> None:
    exchange.send(status, go_json(doc), {"Content-Type": content_type})


def _answer(exchange: _Exchange, reply: SimulatedReply, status: int, doc: bodies.Doc) -> None:
    """A whole (non-streamed) answer, with the reply's encoding and drop fault applied."""
    body = go_json(stamp(doc, reply.created_at))
    send_body(exchange, reply, status, body, {"Content-Type": _JSON})
