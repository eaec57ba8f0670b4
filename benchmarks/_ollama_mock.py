"""What every benchmark shares: Ollama's replies served in-process, and the statistics.

The replies come from an ``httpx.MockTransport`` (or the same family's for ``httpx2``,
which the openai SDK 3.x runs on) answering as Ollama does, bodies handed over as streams
as a network transport does. Nothing here imports ``revenium_ollama_transport``: the
comparison's workers for other libraries import this module too, and importing the
package would meter their calls as well.
"""

from __future__ import annotations

import importlib
import statistics
import sys
from collections.abc import AsyncIterator, Iterator
from types import ModuleType
from typing import Any

import orjson

MODEL = "qwen2.5:0.5b"
EMBED_MODEL = "all-minilm"
CREATED = "2024-07-22T20:16:05.213393Z"
STREAM_CHUNKS = 200

# The token counts Ollama reports for each reply below: what a meter should record.
PROMPT_TOKENS = 26
COMPLETION_TOKENS = 7
EMBED_TOKENS = 8
SSE_COMPLETION_TOKENS = STREAM_CHUNKS


def chat_final(content: str) -> bytes:
    return orjson.dumps(
        {
            "model": MODEL,
            "created_at": CREATED,
            "message": {"role": "assistant", "content": content},
            "done": True,
            "done_reason": "stop",
            "total_duration": 312_345_678,
            "load_duration": 12_345_678,
            "prompt_eval_count": PROMPT_TOKENS,
            "prompt_eval_duration": 45_678_901,
            "eval_count": COMPLETION_TOKENS,
            "eval_duration": 234_567_890,
        }
    )


NON_STREAMED = chat_final("Rayleigh scattering makes short wavelengths scatter more.")
CHUNK = (
    b'{"model":"qwen2.5:0.5b","created_at":"2024-07-22T20:16:05.213393Z",'
    b'"message":{"role":"assistant","content":" tok"},"done":false}\n'
)
FINAL_LINE = chat_final("") + b"\n"
STREAM = [CHUNK] * STREAM_CHUNKS + [FINAL_LINE]
EMBED = orjson.dumps(
    {
        "model": EMBED_MODEL,
        "embeddings": [[0.0123456789] * 384],
        "total_duration": 14_000_000,
        "load_duration": 1_000_000,
        "prompt_eval_count": EMBED_TOKENS,
    }
)
JSON_HEADERS = {"content-type": "application/json; charset=utf-8"}
NDJSON_HEADERS = {"content-type": "application/x-ndjson"}
SSE_HEADERS = {"content-type": "text/event-stream"}


def sse_chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
    chunk = {
        "id": "chatcmpl-7",
        "object": "chat.completion.chunk",
        "created": 1735787045,
        "model": MODEL,
        "system_fingerprint": "fp_ollama",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    return b"data: " + orjson.dumps(chunk) + b"\n\n"


SSE_STREAM = [
    sse_chunk({"role": "assistant", "content": " tok"}),
    *[sse_chunk({"content": " tok"})] * (STREAM_CHUNKS - 1),
    sse_chunk({}, "stop"),
]
SSE_USAGE = (
    b'data: {"id":"chatcmpl-7","object":"chat.completion.chunk","created":1735787045,'
    b'"model":"qwen2.5:0.5b","system_fingerprint":"fp_ollama","choices":[],"usage":'
    b'{"prompt_tokens":26,"completion_tokens":200,"total_tokens":226}}\n\n'
)
SSE_DONE = b"data: [DONE]\n\n"

SMALL = [{"role": "user", "content": "Why is the sky blue?"}]
LARGE = [{"role": "user", "content": "Summarise this: " + "lorem ipsum dolor sit amet " * 75}]

_streams: dict[str, type] = {}


def _stream_type(module: ModuleType) -> type:
    """A body stream of ``module``'s family that both its sync and async clients accept."""
    found = _streams.get(module.__name__)
    if found is None:

        def __init__(self: Any, chunks: list[bytes]) -> None:
            self.chunks = chunks

        def __iter__(self: Any) -> Iterator[bytes]:
            yield from self.chunks

        async def __aiter__(self: Any) -> AsyncIterator[bytes]:
            for chunk in self.chunks:
                yield chunk

        bases = (module.SyncByteStream, module.AsyncByteStream)
        methods = {"__init__": __init__, "__iter__": __iter__, "__aiter__": __aiter__}
        found = _streams[module.__name__] = type("Chunks", bases, methods)
    return found


def reply(request: Any) -> Any:
    """Ollama's answer to ``request``, as a response of the request's own HTTP family."""
    module = importlib.import_module(type(request).__module__.partition(".")[0])
    chunks = _stream_type(module)
    path = request.url.path
    if path.endswith("/chat/completions"):  # the OpenAI-compatible API: always a stream here
        # As Ollama: the usage event only when the request asked for it.
        usage = [SSE_USAGE] if b"include_usage" in request.content else []
        body = chunks([*SSE_STREAM, *usage, SSE_DONE])
        return module.Response(200, headers=SSE_HEADERS, stream=body)
    if path == "/api/embed":
        return module.Response(200, headers=JSON_HEADERS, stream=chunks([EMBED]))
    if b'"stream":true' in request.content:
        return module.Response(200, headers=NDJSON_HEADERS, stream=chunks(STREAM))
    return module.Response(200, headers=JSON_HEADERS, stream=chunks([NON_STREAMED]))


def mock_transport(family: str = "httpx") -> Any:
    """An in-process Ollama, sync and async, for clients of ``family`` (httpx or httpx2)."""
    return importlib.import_module(family).MockTransport(reply)


def openai_family() -> str:
    """The HTTP library the installed openai SDK runs on: httpx2 for 3.x (which imports
    it), else httpx."""
    importlib.import_module("openai")
    return "httpx2" if "httpx2" in sys.modules else "httpx"


def median(values: list[float]) -> float:
    return statistics.median(values)


def p95(values: list[float]) -> float:
    if len(values) < 2:
        return values[0]
    return statistics.quantiles(values, n=20)[-1]
