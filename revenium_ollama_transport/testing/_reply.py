"""What the Ollama simulator answers (`SimulatedReply`) and what it saw (`ReceivedRequest`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal


@dataclass(frozen=True)
class SimulatedReply:
    """How `OllamaSimulator` answers a chat, generate or embed request.

    The OpenAI-compatible routes (`/v1/chat/completions`, `/v1/completions`, `/v1/responses`,
    `/v1/embeddings`) answer from the same fields, converted as Ollama converts its native
    answers: prompt_eval_count is `prompt_tokens` / `input_tokens`, eval_count (or its default)
    `completion_tokens` / `output_tokens`.

    Content:
        model: the `model` field of the answer; None echoes the request's.
        tokens: content pieces, one streamed chunk each (joined when not streamed).
        thinking: thinking pieces, streamed before the content.
        prompt_eval_count, eval_count: token counts; eval_count None means
            len(tokens) + len(thinking).
        prompt_eval_cached_count: sent in the final chunk when not None.
        done_reason: None leaves the field out.
        total_duration, load_duration, prompt_eval_duration, eval_duration: nanoseconds; 0 leaves
            the field out, as Ollama's `omitempty` does.
        tool_calls: sent as given (e.g. `{"function": {"name": ..., "arguments": {...}}}`), on
            their own chunk before the final one ("intermediate") or on the final chunk ("final").
        embedding_dims: length of each embedding vector.
        created_at: a fixed `created_at` for every chunk (None stamps the time each one goes
            out, as Ollama does), for byte-for-byte comparisons of two answers. On the OpenAI
            routes it sets `created` (Unix seconds) where Ollama derives it from `created_at`.
        sse_line_end: the line ending of the OpenAI routes' server-sent events: "\n" (what
            Ollama sends), or "\r\n" or "\r", which are valid SSE too, to test parsers.

    Faults:
        status: >= 400 answers that status with `{"error": error}` before any streaming.
        error: the error text; "" picks Ollama's own message for the status.
        error_after: after N streamed chunks (thinking and content), an `{"error": ...}` line
            ends the stream: no done chunk, but a normal end of the HTTP body. 0, or any value
            when not streaming, answers 500 instead, as Ollama does when nothing was written yet.
            On the OpenAI routes the error line becomes what Ollama makes of it: one empty
            chunk (chat, completions) or nothing (responses), then the end of the body with no
            finish chunk, no usage and no `[DONE]` / `response.completed`.
        drop_after: after N chunks (the final one counts) the TCP connection is closed without
            the terminating zero-length chunk, even when N covers every chunk; not streaming,
            half the body is sent. On the OpenAI routes N counts the same native chunks; each
            becomes the SSE frame(s) Ollama writes for it.
        first_byte_delay: seconds before the status line.
        chunk_delay: seconds between streamed chunks.
        gzip: `Content-Encoding: gzip`; a stream is sync-flushed per chunk so lines still
            arrive one by one.
    """

    model: str | None = None
    tokens: Sequence[str] = ("The", " sky", " is", " blue", ".")
    thinking: Sequence[str] = ()
    prompt_eval_count: int = 26
    eval_count: int | None = None
    prompt_eval_cached_count: int | None = None
    done_reason: str | None = "stop"
    total_duration: int = 312_345_678
    load_duration: int = 12_345_678
    prompt_eval_duration: int = 45_678_901
    eval_duration: int = 234_567_890
    tool_calls: Sequence[Mapping[str, Any]] | None = None
    tool_calls_on: Literal["intermediate", "final"] = "intermediate"
    embedding_dims: int = 8
    created_at: str | None = None
    status: int = 200
    error: str = ""
    error_after: int | None = None
    drop_after: int | None = None
    first_byte_delay: float = 0.0
    chunk_delay: float = 0.0
    gzip: bool = False
    sse_line_end: str = "\n"

    def __post_init__(self) -> None:
        # Freeze the sequences too, so a reply can be shared between threads and requests.
        object.__setattr__(self, "tokens", tuple(self.tokens))
        object.__setattr__(self, "thinking", tuple(self.thinking))
        if self.tool_calls is not None:
            object.__setattr__(self, "tool_calls", tuple(dict(c) for c in self.tool_calls))
        if self.tool_calls_on not in ("intermediate", "final"):
            raise ValueError("tool_calls_on must be 'intermediate' or 'final'")
        if not 200 <= self.status <= 599 or 200 < self.status < 400:
            raise ValueError("status must be 200 or an error status (400-599)")
        for name in ("error_after", "drop_after", "eval_count", "prompt_eval_cached_count"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ValueError(f"{name} must be >= 0")
        if self.first_byte_delay < 0 or self.chunk_delay < 0:
            raise ValueError("delays must be >= 0")
        if self.embedding_dims < 1:
            raise ValueError("embedding_dims must be >= 1")
        if self.sse_line_end not in ("\n", "\r\n", "\r"):
            raise ValueError(r"sse_line_end must be '\n', '\r\n' or '\r'")

    @property
    def output_tokens(self) -> int:
        """The `eval_count` this reply reports."""
        if self.eval_count is not None:
            return self.eval_count
        return len(self.tokens) + len(self.thinking)


@dataclass(frozen=True)
class ReceivedRequest:
    """A request as the simulator received it."""

    method: str
    path: str
    headers: dict[str, str]  # names lower-cased
    body: bytes
    json: Any  # the parsed body, or None when empty or not JSON
