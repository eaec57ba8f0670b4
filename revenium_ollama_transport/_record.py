"""The rule that turns an ended ``CallObservation`` into a metering record.

Pure apart from reading the observation: runs in the delivery thread, never on the
caller's path. Field names and meanings follow the Revenium metering API.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import orjson

from ._observation import ENDED_CLOSED, ENDED_EOF, CallObservation, StreamParser
from ._routes import NATIVE
from ._stats import counters
from ._wire._encoding import decoder_for
from ._wire._native import NativeParser
from ._wire._openai import OpenAIParser

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


# The formatted date and time of the second last formatted: a record's three timestamps
# mostly fall in one second, and a batch's records in a few.
_last_second: tuple[int, str] = (-1, "")
# round() on a float, as round() does it (half to even), without the bound method that
# round() makes each time: five times a record.
_round = float.__round__
# Milliseconds as formatted ("000"-"999"), and with the closing "Z": a lookup instead of a
# format() call, which makes several objects each time.
_MILLISECONDS = [f"{n:03d}Z" for n in range(1000)]


def iso_utc(epoch_seconds: float) -> str:
    """ISO-8601 in UTC with milliseconds and a ``Z``, as the metering API expects: what
    ``datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="milliseconds")`` gives
    (rounded to the microsecond, half to even, then cut to the millisecond), at a third of
    its cost."""
    global _last_second  # noqa: PLW0603 - a one-entry cache; replacing a tuple is atomic
    fraction, whole = math.modf(epoch_seconds)
    micros = _round(fraction * 1e6)
    if micros >= 1_000_000:
        micros -= 1_000_000
        whole += 1.0
    elif micros < 0:
        micros += 1_000_000
        whole -= 1.0
    second = int(whole)
    cached_second, prefix = _last_second
    if second != cached_second:
        t = time.gmtime(second)
        prefix = f"{t[0]:04d}-{t[1]:02d}-{t[2]:02d}T{t[3]:02d}:{t[4]:02d}:{t[5]:02d}."
        _last_second = (second, prefix)
    return prefix + _MILLISECONDS[micros // 1000]


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


def _body_parser(observation: CallObservation) -> tuple[StreamParser | None, bool]:
    """The parser holding what the response said, and whether its encoding was unreadable."""
    encoding = observation.content_encoding
    decode = None if encoding is None else decoder_for(encoding.decode("latin-1"))
    undecodable = encoding is not None and decode is None
    parser = observation.parser
    if parser is not None:  # a stream: parsed up to its first token, the rest kept
        observation.digest()
        if observation.ended == ENDED_EOF:
            parser.finish()
    elif observation.body is not None and not undecodable:
        data = b"".join(observation.body)
        route = observation.route
        parser = NativeParser() if route.api == NATIVE else OpenAIParser(route.kind, stream=False)
        parser.feed(data if decode is None else decode(data))
        parser.finish()
    if parser is not None:
        parser.resolve()
    return parser, undecodable


@dataclass
class _Said:
    """What a response body said, whichever API shaped it."""

    model: str | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    completed: bool = False  # its final object or terminal event arrived
    end_reason: str = "END"  # the stop reason when completed
    error: str | None = None  # an error the body carried
    tool_calls: bool = False
    token_chunks: int = 0  # chunks that carried a token: the output of a call cut short
    wire: dict[str, Any] = field(default_factory=dict)  # fields only this API provides
    details: dict[str, Any] = field(default_factory=dict)


def _said_native(parser: NativeParser) -> _Said:
    final = parser.final
    said = _Said(error=parser.error, tool_calls=parser.tool_calls, token_chunks=parser.token_chunks)
    if final is None:
        return said
    model = final.get("model")
    said.model = model if isinstance(model, str) else None
    said.input_tokens = _count(final.get("prompt_eval_count"))
    said.output_tokens = _count(final.get("eval_count"))
    said.completed = True
    done_reason = final.get("done_reason")
    if isinstance(done_reason, str):
        said.end_reason = _DONE_REASONS.get(done_reason, "END")
    for name in _OLLAMA_TIMINGS:
        said.details[name] = _count(final.get(name))
    said.details["prompt_eval_cached_count"] = _count(final.get("prompt_eval_cached_count"))
    return said


# OpenAI finish_reason (for /v1/responses, as the parser maps the response's status).
_FINISH_REASONS = {"stop": "END", "length": "TOKEN_LIMIT", "tool_calls": "END_SEQUENCE"}


def _said_openai(parser: OpenAIParser, streamed: bool) -> _Said:
    said = _Said(
        model=parser.model,
        input_tokens=parser.prompt_tokens,
        output_tokens=parser.completion_tokens,
        completed=parser.completed,
        error=parser.error,
        tool_calls=parser.tool_calls,
        token_chunks=parser.token_events,
    )
    if parser.finish_reason is not None:
        said.end_reason = _FINISH_REASONS.get(parser.finish_reason, "END")
    if parser.system_fingerprint:
        said.wire["systemFingerprint"] = parser.system_fingerprint
    if parser.reasoning_tokens:
        said.wire["reasoningTokenCount"] = parser.reasoning_tokens
    if parser.cached_tokens:
        said.wire["cacheReadTokenCount"] = parser.cached_tokens
    if streamed and parser.completed and not parser.usage_seen:
        # A server that sent no token counts although they were asked for: zero, counted.
        counters.add("stream_without_usage")
        said.details["usage_missing"] = True
    return said


def _said(parser: StreamParser | None, streamed: bool) -> _Said:
    if parser is None:
        return _Said()
    if isinstance(parser, NativeParser):
        return _said_native(parser)
    return _said_openai(parser, streamed)


def _stop(observation: CallObservation, said: _Said, undecodable: bool) -> tuple[str, str | None]:
    """The stop reason and error reason: how the call ended, first signal wins."""
    status = observation.status
    if status is not None and status >= 400:
        return "ERROR", said.error or f"HTTP {status}"
    if said.error is not None:
        return "ERROR", said.error
    if said.completed:
        return said.end_reason, None
    exception = observation.exception
    if exception is not None and observation.ended not in (ENDED_EOF, ENDED_CLOSED):
        if not isinstance(exception, Exception):
            return "CANCELLED", None  # GeneratorExit, CancelledError, KeyboardInterrupt
        if _is_timeout(exception):
            return "TIMEOUT", _exception_reason(exception)
        return "ERROR", _exception_reason(exception)
    if observation.ended == ENDED_CLOSED:
        return "CANCELLED", None
    if undecodable:
        return "END", None  # an encoding we cannot read: the call went through, usage unknown
    return "ERROR", "response ended before its final chunk"


def build_record(observation: CallObservation, metadata: dict[str, Any]) -> MeteringRecord:
    parser, undecodable = _body_parser(observation)
    request = _request_json(observation)
    route = observation.route
    status = observation.status

    start = observation.mono_start
    end = observation.mono_end if observation.mono_end is not None else start
    wall = observation.wall_start
    response_time = iso_utc(wall + (end - start))

    if status is not None and status < 400 and observation.content_type is not None:
        streamed = observation.streamed_response()
    else:
        # Native routes stream when "stream" is absent, /v1 routes do not; embeddings never.
        asked = request.get("stream", route.api == NATIVE)
        streamed = not route.embeddings and asked is True
    said = _said(parser, streamed)

    model = said.model or request.get("model")
    wire: dict[str, Any] = {
        "transactionId": observation.transaction_id,
        "model": model if isinstance(model, str) and model else "unknown",
        "provider": "OLLAMA",
        "modelSource": "OLLAMA",
        "middlewareSource": "PYTHON",
        "costType": "AI",
        "operationType": route.operation,
        "isStreamed": streamed,
        "requestTime": iso_utc(wall),
        "responseTime": response_time,
        "requestDuration": max(0, _round((end - start) * 1000)),
    }
    stop_reason, error_reason = _stop(observation, said, undecodable)
    wire["stopReason"] = stop_reason
    if status is not None and status >= 400:
        wire["errorCode"] = status
    if error_reason is not None:
        wire["errorReason"] = error_reason[:255]

    output_tokens = said.output_tokens
    if stop_reason not in ("END", "TOKEN_LIMIT", "END_SEQUENCE"):
        # Cut short: Ollama sends one token per streamed chunk, so count what arrived.
        output_tokens = max(output_tokens, said.token_chunks)
    wire["inputTokenCount"] = said.input_tokens
    wire["outputTokenCount"] = output_tokens
    wire["totalTokenCount"] = said.input_tokens + output_tokens
    if said.tool_calls and route.operation == "CHAT":
        wire["operationType"] = "TOOL_CALL"

    first_token = observation.mono_first_token
    if not streamed and observation.mono_headers is not None and status is not None:
        first_token = observation.mono_headers if status < 400 else None
    if first_token is not None:
        wire["completionStartTime"] = iso_utc(wall + (first_token - start))
        wire["timeToFirstToken"] = max(0, _round((first_token - start) * 1000))
    else:
        wire["completionStartTime"] = response_time

    options = request.get("options")
    if isinstance(options, dict):
        temperature = options.get("temperature")
        if isinstance(temperature, (int, float)) and not isinstance(temperature, bool):
            wire["temperature"] = float(temperature)
    wire.update(said.wire)
    wire.update(metadata)
    if observation.retry_number is not None:
        wire["retryNumber"] = observation.retry_number  # the SDK's own count wins

    url = observation.url
    port = url.port or (443 if url.scheme == "https" else 80)
    details: dict[str, Any] = {"route": route.path, "host": f"{url.scheme}://{url.host}:{port}"}
    details.update(said.details)
    if undecodable and observation.content_encoding is not None:
        details["undecodable_encoding"] = observation.content_encoding.decode("latin-1")
    return MeteringRecord(wire=wire, details=details)
