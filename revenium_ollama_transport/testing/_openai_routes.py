"""`OllamaSimulator`'s OpenAI-compatible routes, framed as Ollama frames them.

Verified against the ollama/ollama Go source (commit fb30760 of 2026-08-21, after v0.33.0-rc2:
`middleware/openai.go`, `openai/openai.go`, `openai/responses.go`, `server/routes.go`,
`api/types.go`). Ollama builds these answers by running the native handler and converting each
native document in a wrapping `gin.ResponseWriter`; the simulator does the same with the native
documents of `_ollama_bodies.py`, so every native fault and count carries over.

Routes (`server/routes.go`): POST `/v1/chat/completions`, `/v1/completions`, `/v1/embeddings`,
`/v1/responses`; GET `/v1/models` and `/v1/models/:model` (one path segment).

Framing:
- Streams: `Content-Type: text/event-stream`, chunked, frames `data: <json>\\n\\n` written
  with `fmt.Sprintf("data: %s\\n\\n")`. Go writes every frame produced by one native chunk and
  flushes once (one HTTP chunk); `/v1/responses` flushes after each `event: <name>\\ndata:
  <json>\\n\\n` and also sets `Cache-Control: no-cache` and `Connection: keep-alive`.
  `SimulatedReply.sse_line_end` swaps the "\\n" for "\\r\\n" or "\\r" to test SSE parsers;
  Ollama itself only ever writes "\\n".
- Whole answers and errors from the handler go through `json.NewEncoder(w).Encode`:
  `Content-Type: application/json` (no charset) and a trailing newline. Errors found by the
  middleware itself (`c.AbortWithStatusJSON`: unreadable body, empty `messages`, a bad
  `encoding_format` or `input`) are gin's `application/json; charset=utf-8` with no newline.
- Errors: `{"error":{"message","type","param":null,"code":null}}` (`openai.NewError`) with the
  HTTP status; type `invalid_request_error` for 400, `not_found_error` for 404, `api_error`
  otherwise; `param` and `code` are always null. The message is the native error's text (the
  default 404 text is the scheduler's `model "x" not found, try pulling it first`; a model that
  was never pulled gets `model 'x' not found` from ChatHandler: set `SimulatedReply.error`).

Chat (`ChatWriter`): ids `chatcmpl-<rand.Intn(999)>`; `system_fingerprint` `fp_ollama`; `object`
`chat.completion` / `chat.completion.chunk`; `created` is the first native chunk's `created_at` in
Unix seconds, pinned for the whole stream; `model` is the native chunk's. The first chunk carries
`delta.role` *together with* the first content or thinking (there is no role-only chunk unless the
answer is empty); `delta.content` is always present ("" included) except on the finish chunk; every
chunk has `"finish_reason":null` until the separate finish chunk, which has `"delta":{}` and
`finish_reason` = done_reason or "stop", "stop" turned into "tool_calls" once a tool call was sent.
The native metrics-only trailer adds no content chunk. Only with `stream_options.include_usage`
comes a usage chunk: the finish chunk again with `"choices":[]` and `usage`; no other chunk has a
`usage` key at all (omitted, never null). Then `data: [DONE]`. Thinking becomes `delta.reasoning` /
`message.reasoning`. Tool calls become
`{"id","index","type":"function","function":{"name","arguments":"<json string>"}}`; Ollama gives
every native tool call an id `call_<8 of [a-z0-9]>` and an index, so the simulator adds them when
the `SimulatedReply` has none.

Completions (`CompleteWriter`): ids `cmpl-<n>`; one chunk per native chunk, field order `id,
object, created, choices, model, system_fingerprint, usage` (a whole answer has `model` before
`choices`); `created` is the time of each chunk; the done chunk itself carries `finish_reason`
(no separate finish chunk; null when there is no done_reason). With include_usage every chunk
carries `{"prompt_tokens":0,"completion_tokens":0,"total_tokens":0}` and a last `"choices":[]`
chunk the real usage, then `[DONE]`.

Mid-stream error: the native handler writes `{"error":"..."}` into the wrapping writer, which
decodes it as an empty native chunk and converts it like any other (it does not look at
`error`): chat writes one more chunk `{"delta":{"content":""},"finish_reason":null}` with
`"model":""`, completions one with `"text":""` and `"model":""` (plus the zero usage with
include_usage), responses nothing; then the stream ends normally: no finish chunk, no usage, no
`[DONE]`, no `response.completed`. Before any byte (`error_after=0`, or not streaming) it is a
500 with the error object.

Embeddings (`EmbeddingsMiddleware`, `EmbedHandler`): `input` is a string or a list of strings
("" counts as [""]; null or [] is a 400 "invalid input"); token arrays are refused by the native
handler (400 "invalid input type"). `encoding_format` "float" or "base64" (case-insensitive;
base64 of little-endian float32), anything else a 400. `model` is always the request's; usage is
`{"prompt_tokens","total_tokens"}`, both the native prompt_eval_count.

Responses (`ResponsesWriter`, `ResponsesStreamConverter`): see `_openai_responses.py`. `model`
is always the request's; ids `resp_<rand.Intn(999999)>`, `msg_<n>`; `stream` defaults to false.

Models (`ListWriter`, `RetrieveWriter`): `{"object":"list","data":[{"id","object":"model",
"created","owned_by"}]}`, `created` the model's modified_at, `owned_by` the name's namespace
("library" for a bare name); an empty list is `"data":null`. An unknown model is a 404
`model '<name:tag>' not found`.
"""

from __future__ import annotations

import dataclasses
import random
import string
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import unquote

import orjson

from . import _ollama_bodies as native
from . import _openai_bodies as bodies
from ._openai_responses import ResponsesStream, message_id, response_id, to_response
from ._reply import SimulatedReply
from ._server import _Exchange
from ._streaming import Doc, Framing, Step, answer_inference, send_body, send_error
from ._wire import go_json

_JSON = "application/json"  # set by the OpenAI writers
_GIN_JSON = "application/json; charset=utf-8"  # c.AbortWithStatusJSON in the middleware
_SSE = {"Content-Type": "text/event-stream"}
_RESPONSES_SSE = {**_SSE, "Cache-Control": "no-cache", "Connection": "keep-alive"}
_CALL_ID_LETTERS = string.ascii_lowercase + string.digits
_GO_KINDS = {list: "array", str: "string", bool: "bool", int: "number", float: "number"}


def _error(status: int, message: str) -> tuple[bytes, Mapping[str, str]]:
    return go_json(bodies.error_doc(status, message)) + b"\n", {"Content-Type": _JSON}


def _sse(data: bytes, line_end: bytes, event: str | None = None) -> bytes:
    head = b"event: " + event.encode() + line_end if event is not None else b""
    return head + b"data: " + data + line_end + line_end


def _payload(payload: bodies.Payload) -> bytes:
    return payload.encode() if isinstance(payload, str) else go_json(payload)


class _ChatFraming:
    stream_headers: Mapping[str, str] = _SSE

    def __init__(self, request: Doc, line_end: str) -> None:
        self._id = bodies.chat_id()
        self._stream = bodies.ChatStream(self._id, _include_usage(request))
        self._end = line_end.encode()

    def whole(self, doc: Doc) -> tuple[bytes, Mapping[str, str]]:
        return go_json(bodies.chat_completion(self._id, doc)) + b"\n", {"Content-Type": _JSON}

    def step(self, doc: Doc) -> Step:
        return [b"".join(_sse(_payload(p), self._end) for p in self._stream.step(doc))]

    def error(self, status: int, message: str) -> tuple[bytes, Mapping[str, str]]:
        return _error(status, message)


class _CompletionFraming:
    stream_headers: Mapping[str, str] = _SSE

    def __init__(self, request: Doc, line_end: str) -> None:
        self._id = bodies.completion_id()
        self._stream = bodies.CompletionStream(self._id, _include_usage(request))
        self._end = line_end.encode()

    def whole(self, doc: Doc) -> tuple[bytes, Mapping[str, str]]:
        return go_json(bodies.completion(self._id, doc)) + b"\n", {"Content-Type": _JSON}

    def step(self, doc: Doc) -> Step:
        return [b"".join(_sse(_payload(p), self._end) for p in self._stream.step(doc))]

    def error(self, status: int, message: str) -> tuple[bytes, Mapping[str, str]]:
        return _error(status, message)


class _ResponsesFraming:
    def __init__(self, request: Doc, line_end: str) -> None:
        self._request = request
        self._model = _text(request.get("model"))
        self._id, self._item_id = response_id(), message_id()
        self._stream = ResponsesStream(self._id, self._item_id, self._model, request)
        self._streamed = _responses_streamed(request)
        self._end = line_end.encode()

    @property
    def stream_headers(self) -> Mapping[str, str]:
        return _RESPONSES_SSE

    def whole(self, doc: Doc) -> tuple[bytes, Mapping[str, str]]:
        response = to_response(self._model, self._id, self._item_id, doc, self._request)
        return go_json(response) + b"\n", {"Content-Type": _JSON}

    def step(self, doc: Doc) -> Step:
        return [_sse(go_json(data), self._end, name) for name, data in self._stream.step(doc)]

    def error(self, status: int, message: str) -> tuple[bytes, Mapping[str, str]]:
        body, headers = _error(status, message)
        # The middleware set the stream headers before the handler failed; only the type changes.
        return body, ({**_RESPONSES_SSE, **headers} if self._streamed else headers)


_MakeFraming = Callable[[Doc, str], Framing]


class OpenAIRoutes:
    """The `/v1/*` handlers, mixed into `OllamaSimulator`."""

    models: list[str]

    def _take_reply(self, exchange: _Exchange) -> SimulatedReply | None:
        """The next reply, after its first_byte_delay; None when the server stopped meanwhile."""
        raise NotImplementedError

    def _v1_chat(self, exchange: _Exchange, payload: Any) -> None:
        request = _bind(exchange, payload, "ChatCompletionRequest")
        if request is None:
            return
        messages = request.get("messages")
        if messages is not None and not isinstance(messages, list):
            _refuse(exchange, _type_error("ChatCompletionRequest", "messages", messages))
            return
        if not messages:
            _refuse(exchange, "[] is too short - 'messages'")
            return
        streamed = request.get("stream") is True
        self._v1_inference(
            exchange, request, streamed, _ChatFraming, native.chat_stream, native.chat_full
        )

    def _v1_completions(self, exchange: _Exchange, payload: Any) -> None:
        request = _bind(exchange, payload, "CompletionRequest")
        if request is None:
            return
        prompt = request.get("prompt")
        if prompt is not None and not isinstance(prompt, str):
            _refuse(exchange, _type_error("CompletionRequest", "prompt", prompt))
            return

        def chunks(reply: SimulatedReply, model: str) -> tuple[list[Doc], Doc]:
            return native.generate_stream(reply, model, raw=False)

        def whole(reply: SimulatedReply, model: str) -> Doc:
            return native.generate_full(reply, model, raw=False)

        streamed = request.get("stream") is True
        self._v1_inference(exchange, request, streamed, _CompletionFraming, chunks, whole)

    def _v1_responses(self, exchange: _Exchange, payload: Any) -> None:
        request = _bind(exchange, payload, "ResponsesRequest")
        if request is None:
            return
        streamed = _responses_streamed(request)
        self._v1_inference(
            exchange, request, streamed, _ResponsesFraming, native.chat_stream, native.chat_full
        )

    def _v1_inference(
        self,
        exchange: _Exchange,
        request: Doc,
        streamed: bool,
        make_framing: _MakeFraming,
        chunks: Callable[[SimulatedReply, str], tuple[list[Doc], Doc]],
        whole: Callable[[SimulatedReply, str], Doc],
    ) -> None:
        requested = _text(request.get("model"))
        if not requested:  # the native handler's answer, through the OpenAI writer
            exchange.send(400, *make_framing(request, "\n").error(400, "model is required"))
            return
        reply = self._take_reply(exchange)
        if reply is None:
            return
        reply = _with_call_ids(reply)
        framing = make_framing(request, reply.sse_line_end)
        if reply.status >= 400:
            message = native.error_text(reply, reply.status, requested)
            send_error(exchange, reply, framing, reply.status, message)
            return
        model = reply.model if reply.model is not None else requested
        answer_inference(
            exchange,
            reply,
            framing,
            streamed=streamed,
            chunks=lambda: chunks(reply, model),
            whole=lambda: whole(reply, model),
            error_message=native.error_text(reply, 500, model),
        )

    def _v1_embeddings(self, exchange: _Exchange, payload: Any) -> None:
        request = _bind(exchange, payload, "EmbedRequest")
        if request is None:
            return
        encoding = request.get("encoding_format")
        if encoding is not None and not isinstance(encoding, str):
            _refuse(exchange, _type_error("EmbedRequest", "encoding_format", encoding))
            return
        encoding = encoding or ""
        if encoding and encoding.lower() not in ("float", "base64"):
            _refuse(
                exchange,
                f"Invalid value for 'encoding_format' = {encoding}. "
                "Supported values: ['float', 'base64'].",
            )
            return
        raw = request.get("input")
        if raw == "":
            raw = [""]
        if raw is None or raw == []:
            _refuse(exchange, "invalid input")
            return
        model = _text(request.get("model"))
        if not model:
            exchange.send(404, *_error(404, "model '' not found"))
            return
        if isinstance(raw, str):
            inputs = [raw]
        elif isinstance(raw, list) and all(isinstance(item, str) for item in raw):
            inputs = list(raw)
        else:  # token arrays included: EmbedHandler takes strings only
            exchange.send(400, *_error(400, "invalid input type"))
            return
        reply = self._take_reply(exchange)
        if reply is None:
            return
        if reply.status >= 400:
            body, headers = _error(reply.status, native.error_text(reply, reply.status, model))
            send_body(exchange, reply, reply.status, body, headers)
            return
        doc = native.embed(reply, reply.model if reply.model is not None else model, inputs)
        body = go_json(bodies.embedding_list(model, doc, encoding)) + b"\n"
        send_body(exchange, reply, 200, body, {"Content-Type": _JSON})

    def _v1_models(self, exchange: _Exchange, payload: Any) -> None:
        listing = bodies.model_list(native.tags(self.models))
        exchange.send(200, go_json(listing) + b"\n", {"Content-Type": _JSON})

    def _v1_model(self, exchange: _Exchange, payload: Any) -> None:
        name = unquote(exchange.request.route.removeprefix(MODEL_ROUTE_PREFIX))
        wanted = _shortest(name)
        if wanted not in {_shortest(m) for m in self.models}:
            exchange.send(404, *_error(404, f"model '{wanted}' not found"))
            return
        found = bodies.model(name, native.show(name)["modified_at"])
        exchange.send(200, go_json(found) + b"\n", {"Content-Type": _JSON})


MODEL_ROUTE_PREFIX = "/v1/models/"


def _refuse(exchange: _Exchange, message: str) -> None:
    """A 400 from the middleware itself (gin's c.AbortWithStatusJSON)."""
    exchange.send(400, go_json(bodies.error_doc(400, message)), {"Content-Type": _GIN_JSON})


def _bind(exchange: _Exchange, payload: Any, go_type: str) -> Doc | None:
    """c.ShouldBindJSON into the request struct; None when a 400 was answered."""
    body = exchange.request.body
    if not body.strip():
        _refuse(exchange, "EOF")
        return None
    if payload is None:
        try:
            orjson.loads(body)
        except orjson.JSONDecodeError:
            first = body.lstrip()[:1].decode("latin-1")
            _refuse(exchange, f"invalid character '{first}' looking for beginning of value")
            return None
        return {}  # JSON null leaves the struct empty
    if not isinstance(payload, dict):
        kind = _GO_KINDS.get(type(payload), "value")
        _refuse(exchange, f"json: cannot unmarshal {kind} into Go value of type openai.{go_type}")
        return None
    return payload


def _type_error(go_type: str, field: str, value: object) -> str:
    kind = "object" if isinstance(value, dict) else _GO_KINDS.get(type(value), "value")
    wanted = {"messages": "[]openai.Message"}.get(field, "string")
    return f"json: cannot unmarshal {kind} into Go struct field {go_type}.{field} of type {wanted}"


def _text(value: object) -> str:
    return value if isinstance(value, str) else ""


def _include_usage(request: Doc) -> bool:
    options = request.get("stream_options")
    return isinstance(options, dict) and options.get("include_usage") is True


def _responses_streamed(request: Doc) -> bool:
    return request.get("stream") is True


def _shortest(name: str) -> str:
    """model.Name.DisplayShortest: the default registry and namespace dropped, tag `latest`."""
    for prefix in ("registry.ollama.ai/", "library/"):
        name = name.removeprefix(prefix)
    last = name.rsplit("/", 1)[-1]
    return name if ":" in last else f"{name}:latest"


def _with_call_ids(reply: SimulatedReply) -> SimulatedReply:
    """Tool calls as Ollama's handler emits them: each with an id and a function index."""
    if not reply.tool_calls:
        return reply
    calls: list[dict[str, Any]] = []
    for index, call in enumerate(reply.tool_calls):
        function = call.get("function")
        function = {"index": index, **function} if isinstance(function, dict) else function
        call_id = call.get("id") or "call_" + "".join(random.choices(_CALL_ID_LETTERS, k=8))
        calls.append({**call, "id": call_id, "function": function})
    return dataclasses.replace(reply, tool_calls=calls)
