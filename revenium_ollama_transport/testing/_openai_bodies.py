"""Ollama's OpenAI-compatible bodies, converted from its native ones the way its Go code does.

A port of ollama/ollama `openai/openai.go` (the structs, hence the field order, and `To*`) and of
the `ChatWriter` / `CompleteWriter` / `EmbedWriter` / `ListWriter` / `RetrieveWriter` state in
`middleware/openai.go`. Each function takes the native document(s) the simulator would have sent
on `/api/*`, exactly as Ollama's middleware takes the native handler's output and re-encodes it;
the Responses API lives in `_openai_responses.py`.

A stream converter's `step()` takes one native chunk and returns the payloads Go writes for it:
dicts (a `data: {json}` frame each) and `DONE` (`data: [DONE]`).
"""

from __future__ import annotations

import base64
import random
import struct
import time
from collections.abc import Sequence
from typing import Any

from ._wire import go_json, go_unix

Doc = dict[str, Any]
Payload = Doc | str  # a JSON object, or DONE
DONE = "[DONE]"
FINGERPRINT = "fp_ollama"
_GO_ZERO_UNIX = -62_135_596_800  # time.Time{}.Unix()


def _now() -> int:
    return int(time.time())


def unix_or_now(stamp: object) -> int:
    """`CreatedAt.Unix()`, or now where Go finds a zero time and takes time.Now()."""
    seconds = go_unix(stamp)
    return _now() if seconds is None else seconds


def chat_id() -> str:
    return f"chatcmpl-{random.randrange(999)}"  # rand.Intn(999): 0..998, they repeat


def completion_id() -> str:
    return f"cmpl-{random.randrange(999)}"


# --- errors: openai.NewError ---


def error_doc(status: int, message: str) -> Doc:
    """ErrorResponse{Error{message, type, param, code}}; param and code are always null."""
    kind = {400: "invalid_request_error", 404: "not_found_error"}.get(status, "api_error")
    return {"error": {"message": message, "type": kind, "param": None, "code": None}}


# --- shared pieces ---


def _usage(native: Doc) -> Doc:
    """ToUsage / ToUsageGenerate: native counts are omitted when 0."""
    prompt = int(native.get("prompt_eval_count") or 0)
    completion = int(native.get("eval_count") or 0)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def _zero_usage() -> Doc:
    return {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}


def tool_calls(calls: Sequence[Any]) -> list[Doc]:
    """ToToolCalls: ToolCall{id, index, type, function{name, arguments}}, arguments re-marshaled
    to a JSON string (top-level keys in order: Ollama keeps them in an ordered map)."""
    converted: list[Doc] = []
    for item in calls:
        call = item if isinstance(item, dict) else {}
        function = call.get("function")
        function = function if isinstance(function, dict) else {}
        arguments = function.get("arguments")
        if isinstance(arguments, str):
            encoded = arguments
        else:
            encoded = go_json(_ordered_arguments(arguments)).decode()
        converted.append(
            {
                "id": str(call.get("id") or ""),
                "index": int(function.get("index") or 0),
                "type": "function",
                "function": {"name": str(function.get("name") or ""), "arguments": encoded},
            }
        )
    return converted


def _ordered_arguments(arguments: object) -> object:
    # The top level is an ordered map; nested objects decode to map[string]any, which Go sorts.
    if not isinstance(arguments, dict):
        return {}  # a nil ToolCallFunctionArguments marshals to {}
    return {key: _sorted(value) for key, value in arguments.items()}


def _sorted(value: object) -> object:
    if isinstance(value, dict):
        return {key: _sorted(value[key]) for key in sorted(value)}
    if isinstance(value, list):
        return [_sorted(item) for item in value]
    return value


def _message(native: Doc) -> Doc:
    message = native.get("message")
    return message if isinstance(message, dict) else {}


# --- /v1/chat/completions ---


def chat_completion(completion_id: str, native: Doc) -> Doc:
    """ToChatCompletion: the whole answer (the native non-streamed body)."""
    message = _message(native)
    calls = tool_calls(message.get("tool_calls") or ())
    reason = str(native.get("done_reason") or "")
    if reason == "stop" and calls:
        reason = "tool_calls"
    out_message: Doc = {
        "role": str(message.get("role") or ""),
        "content": str(message.get("content") or ""),
    }
    if message.get("thinking"):
        out_message["reasoning"] = message["thinking"]
    if calls:
        out_message["tool_calls"] = calls
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": unix_or_now(native.get("created_at")),
        "model": str(native.get("model") or ""),
        "system_fingerprint": FINGERPRINT,
        "choices": [{"index": 0, "message": out_message, "finish_reason": reason or None}],
        "usage": _usage(native),
    }


class ChatStream:
    """ChatWriter's streaming state: role on the first chunk only, one `created` for the whole
    stream, the native metrics-only trailer dropped, a separate finish chunk with `"delta":{}`,
    the usage chunk (`"choices":[]`) only with `stream_options.include_usage`, then `[DONE]`.
    No chunk but that one carries `usage` (the field is omitted, not null)."""

    def __init__(self, completion_id: str, include_usage: bool) -> None:
        self.id = completion_id
        self.include_usage = include_usage
        self._first_chunk_sent = False
        self._tool_call_sent = False
        self._created: int | None = None

    def step(self, native: Doc) -> list[Payload]:
        if self._created is None:
            self._created = unix_or_now(native.get("created_at"))
        message = _message(native)
        done = native.get("done") is True
        payloads: list[Payload] = []
        empty_trailer = (
            done
            and self._first_chunk_sent
            and not message.get("content")
            and not message.get("thinking")
            and not message.get("tool_calls")
            and not native.get("logprobs")
        )
        if not empty_trailer:
            for chunk in self._chunks(native, message):
                if chunk["choices"][0]["delta"].get("tool_calls"):
                    self._tool_call_sent = True
                payloads.append(chunk)
            self._first_chunk_sent = True
        if done:
            finish = self._finish_chunk(native)
            payloads.append(finish)
            if self.include_usage:
                payloads.append(finish | {"choices": [], "usage": _usage(native)})
            payloads.append(DONE)
        return payloads

    def _chunks(self, native: Doc, message: Doc) -> list[Doc]:
        """ToStreamChunks: a chunk mixing thinking with content or tool calls is split in two."""
        thinking = str(message.get("thinking") or "")
        content = str(message.get("content") or "")
        calls = tool_calls(message.get("tool_calls") or ())
        role = not self._first_chunk_sent
        if not (thinking and (content or calls)):
            return [self._chunk(native, self._delta(role, content, thinking, calls))]
        return [
            self._chunk(native, self._delta(role, None, thinking, [])),
            self._chunk(native, self._delta(False, content, "", calls)),
        ]

    @staticmethod
    def _delta(role: bool, content: str | None, thinking: str, calls: list[Doc]) -> Doc:
        # Delta: every field omitempty; content is an `any`, so "" is kept and only nil dropped.
        delta: Doc = {"role": "assistant"} if role else {}
        if content is not None:
            delta["content"] = content
        if thinking:
            delta["reasoning"] = thinking
        if calls:
            delta["tool_calls"] = calls
        return delta

    def _chunk(self, native: Doc, delta: Doc, finish_reason: str | None = None) -> Doc:
        return {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self._created,
            "model": str(native.get("model") or ""),
            "system_fingerprint": FINGERPRINT,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
        }

    def _finish_chunk(self, native: Doc) -> Doc:
        """FinishChunk: an empty delta; a missing done_reason is "stop", and "stop" becomes
        "tool_calls" once a tool call went out (other reasons pass through)."""
        reason = str(native.get("done_reason") or "") or "stop"
        if reason == "stop" and self._tool_call_sent:
            reason = "tool_calls"
        return self._chunk(native, {}, reason)


# --- /v1/completions ---


def _completion_choice(native: Doc) -> Doc:
    return {
        "text": str(native.get("response") or ""),
        "index": 0,
        "finish_reason": native.get("done_reason") or None,
    }


def completion(completion_id: str, native: Doc) -> Doc:
    """ToCompletion (note: `model` before `choices` here, after it in a chunk)."""
    return {
        "id": completion_id,
        "object": "text_completion",
        "created": unix_or_now(native.get("created_at")),
        "model": str(native.get("model") or ""),
        "system_fingerprint": FINGERPRINT,
        "choices": [_completion_choice(native)],
        "usage": _usage(native),
    }


class CompletionStream:
    """CompleteWriter: one chunk per native chunk (thinking and tool-call chunks give an empty
    `text`), the done chunk carrying `finish_reason`; `created` is the time of each chunk. With
    include_usage every chunk has a zero `usage` and a last `"choices":[]` chunk the real one."""

    def __init__(self, completion_id: str, include_usage: bool) -> None:
        self.id = completion_id
        self.include_usage = include_usage

    def step(self, native: Doc) -> list[Payload]:
        chunk: Doc = {
            "id": self.id,
            "object": "text_completion",
            "created": _now(),
            "choices": [_completion_choice(native)],
            "model": str(native.get("model") or ""),
            "system_fingerprint": FINGERPRINT,
        }
        if self.include_usage:
            chunk["usage"] = _zero_usage()
        payloads: list[Payload] = [chunk]
        if native.get("done") is True:
            if self.include_usage:
                payloads.append(chunk | {"choices": [], "usage": _usage(native)})
            payloads.append(DONE)
        return payloads


# --- /v1/embeddings ---


def embedding_list(model: str, native: Doc, encoding_format: str) -> Doc:
    """ToEmbeddingList: `model` is the request's; usage counts the prompt only; base64 packs
    little-endian float32s. No embedding at all gives `"data":null` (Go's nil slice)."""
    vectors = native.get("embeddings")
    if vectors is None:
        return {
            "object": "",
            "data": None,
            "model": "",
            "usage": {"prompt_tokens": 0, "total_tokens": 0},
        }
    as_base64 = encoding_format.lower() == "base64"
    data = [
        {
            "object": "embedding",
            "embedding": _base64_floats(vector) if as_base64 else vector,
            "index": index,
        }
        for index, vector in enumerate(vectors)
    ]
    prompt = int(native.get("prompt_eval_count") or 0)
    return {
        "object": "list",
        "data": data or None,
        "model": model,
        "usage": {"prompt_tokens": prompt, "total_tokens": prompt},
    }


def _base64_floats(vector: Sequence[float]) -> str:
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()


# --- /v1/models ---


def _owned_by(name: str) -> str:
    """model.ParseName(name).Namespace: `library` for a bare name."""
    parts = name.split("/")  # a tag can only be in the last part
    if len(parts) >= 3:
        return parts[-2]
    if len(parts) == 2:
        return parts[0]
    return "library"


def model(name: str, modified_at: object) -> Doc:
    """ToModel: Model{id, object, created, owned_by}."""
    created = go_unix(modified_at)
    return {
        "id": name,
        "object": "model",
        "created": _GO_ZERO_UNIX if created is None else created,
        "owned_by": _owned_by(name),
    }


def model_list(tags: Doc) -> Doc:
    """ToListCompletion from the native /api/tags body; no model at all gives `"data":null`."""
    data = [
        model(str(entry.get("model") or entry.get("name") or ""), entry.get("modified_at"))
        for entry in tags.get("models") or ()
    ]
    return {"object": "list", "data": data or None}
