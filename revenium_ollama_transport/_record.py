"""The rule that turns an ended ``CallObservation`` into a metering record.

Pure apart from reading the observation: runs in the delivery thread, never on the
caller's path. Field names and meanings follow the Revenium metering API.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import orjson

from ._observation import ENDED_CLOSED, ENDED_EOF, CallObservation
from ._wire._encoding import decoder_for
from ._wire._native import NativeParser

_DONE_REASONS = {"stop": "END", "length": "TOKEN_LIMIT", "load": "END", "unload": "END"}
_OLLAMA_TIMINGS = ("total_duration", "load_duration", "prompt_eval_duration", "eval_duration")


@dataclass
class MeteringRecord:
    """``wire`` is what the metering API receives; ``details`` what it has no field for."""

    wire: dict[str, Any]
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def transaction_id(self) -> str:
        return str(self.wire["transactionId"])


def iso_utc(epoch_seconds: float) -> str:
    """ISO-8601 in UTC with milliseconds and a ``Z``, as the metering API expects."""
    moment = datetime.fromtimestamp(epoch_seconds, timezone.utc)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _count(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def _request_json(observation: CallObservation) -> dict[str, Any]:
    body = observation.request_body
    if not body:
        return {}
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        return {}
    return parsed if isinstance(parsed, dict) else {}


def _exception_reason(exception: BaseException) -> str:
    text = str(exception)
    name = type(exception).__name__
    return f"{name}: {text}" if text else name


def _is_timeout(exception: BaseException) -> bool:
    return any("Timeout" in cls.__name__ for cls in type(exception).__mro__)


def _body_parser(observation: CallObservation) -> tuple[NativeParser | None, bool]:
    """The parser holding what the response said, and whether its encoding was unreadable."""
    encoding = observation.content_encoding
    undecodable = encoding is not None and decoder_for(encoding.decode("latin-1")) is None
    parser = observation.parser
    if parser is not None:  # a stream: parsed up to its first token, the rest kept
        observation.digest()
        if observation.ended == ENDED_EOF:
            parser.finish()
    elif observation.body is not None and not undecodable:
        data = b"".join(observation.body)
        decode = None if encoding is None else decoder_for(encoding.decode("latin-1"))
        parser = NativeParser()
        parser.feed(data if decode is None else decode(data))
        parser.finish()
    if parser is not None:
        parser.resolve()
    return parser, undecodable


def build_record(observation: CallObservation, metadata: dict[str, Any]) -> MeteringRecord:
    parser, undecodable = _body_parser(observation)
    request = _request_json(observation)
    final = parser.final if parser is not None else None
    route = observation.route
    status = observation.status

    start = observation.mono_start
    end = observation.mono_end if observation.mono_end is not None else start
    wall = observation.wall_start
    duration_ms = max(0, round((end - start) * 1000))
    response_time = iso_utc(wall + (end - start))

    content_type = observation.content_type
    if status is not None and status < 400 and content_type is not None:
        streamed = b"ndjson" in content_type
    else:
        # The server streams when "stream" is absent; the embed routes never stream.
        streamed = not route.embeddings and request.get("stream", True) is not False

    wire: dict[str, Any] = {
        "transactionId": observation.transaction_id,
        "model": "",
        "provider": "OLLAMA",
        "modelSource": "OLLAMA",
        "middlewareSource": "PYTHON",
        "costType": "AI",
        "operationType": route.operation,
        "isStreamed": streamed,
        "requestTime": iso_utc(wall),
        "responseTime": response_time,
        "requestDuration": duration_ms,
    }
    model = final.get("model") if final else None
    if not isinstance(model, str) or not model:
        model = request.get("model")
    wire["model"] = model if isinstance(model, str) and model else "unknown"

    input_tokens = _count(final.get("prompt_eval_count")) if final else 0
    output_tokens = _count(final.get("eval_count")) if final else 0

    stop_reason: str
    error_reason: str | None = None
    if status is not None and status >= 400:
        stop_reason = "ERROR"
        wire["errorCode"] = status
        error_reason = (parser.error if parser is not None else None) or f"HTTP {status}"
    elif parser is not None and parser.error is not None:
        stop_reason = "ERROR"
        error_reason = parser.error
    elif final is not None:
        done_reason = final.get("done_reason")
        stop_reason = "END"
        if isinstance(done_reason, str):
            stop_reason = _DONE_REASONS.get(done_reason, "END")
    elif observation.exception is not None and observation.ended not in (ENDED_EOF, ENDED_CLOSED):
        exception = observation.exception
        if not isinstance(exception, Exception):
            stop_reason = "CANCELLED"  # GeneratorExit, CancelledError, KeyboardInterrupt
        elif _is_timeout(exception):
            stop_reason = "TIMEOUT"
            error_reason = _exception_reason(exception)
        else:
            stop_reason = "ERROR"
            error_reason = _exception_reason(exception)
    elif observation.ended == ENDED_CLOSED:
        stop_reason = "CANCELLED"
    elif undecodable:
        stop_reason = "END"  # an encoding we cannot read: the call went through, usage unknown
    else:
        stop_reason = "ERROR"
        error_reason = "response ended before Ollama's final chunk"

    if stop_reason not in ("END", "TOKEN_LIMIT") and parser is not None:
        # Cut short: Ollama sends one token per streamed chunk, so count what arrived.
        output_tokens = max(output_tokens, parser.token_chunks)
    wire["stopReason"] = stop_reason
    if error_reason is not None:
        wire["errorReason"] = error_reason[:255]

    wire["inputTokenCount"] = input_tokens
    wire["outputTokenCount"] = output_tokens
    wire["totalTokenCount"] = input_tokens + output_tokens

    if parser is not None and parser.tool_calls and route.operation == "CHAT":
        wire["operationType"] = "TOOL_CALL"

    first_token = observation.mono_first_token
    if not streamed and observation.mono_headers is not None and status is not None:
        first_token = observation.mono_headers if status < 400 else None
    if first_token is not None:
        wire["completionStartTime"] = iso_utc(wall + (first_token - start))
        wire["timeToFirstToken"] = max(0, round((first_token - start) * 1000))
    else:
        wire["completionStartTime"] = response_time

    options = request.get("options")
    if isinstance(options, dict):
        temperature = options.get("temperature")
        if isinstance(temperature, (int, float)) and not isinstance(temperature, bool):
            wire["temperature"] = float(temperature)

    wire.update(metadata)

    url = observation.url
    port = url.port or (443 if url.scheme == "https" else 80)
    details: dict[str, Any] = {"route": route.path, "host": f"{url.scheme}://{url.host}:{port}"}
    if final:
        for name in _OLLAMA_TIMINGS:
            details[name] = _count(final.get(name))
        details["prompt_eval_cached_count"] = _count(final.get("prompt_eval_cached_count"))
    if undecodable and observation.content_encoding is not None:
        details["undecodable_encoding"] = observation.content_encoding.decode("latin-1")
    return MeteringRecord(wire=wire, details=details)
