"""The JSON documents Ollama sends, built with the field order of its Go structs (api/types.go).

`created_at` is left empty here and stamped as each chunk goes out, like the server does.
"""

from __future__ import annotations

import hashlib
import math
import random
from typing import Any

from ._reply import SimulatedReply
from ._wire import go_time

Doc = dict[str, Any]

_CONTEXT_CAP = 2048  # /api/generate's `context` is every token; cap it for huge fake counts

# Ollama's own messages (server/routes.go, server/sched.go) for the statuses it sends.
_ERRORS = {
    400: "invalid request",
    404: 'model "{model}" not found, try pulling it first',
    499: "request canceled",
    500: "llama runner process has terminated: exit status 2",
    503: "server busy, please try again.  maximum pending requests exceeded",
}


def error_text(reply: SimulatedReply, status: int, model: str) -> str:
    """The reply's `error`, else Ollama's message for the status."""
    if reply.error:
        return reply.error
    return _ERRORS.get(status, "simulated error").format(model=model)


def _metrics(reply: SimulatedReply) -> Doc:
    fields = (
        ("total_duration", reply.total_duration),
        ("load_duration", reply.load_duration),
        ("prompt_eval_count", reply.prompt_eval_count),
        ("prompt_eval_duration", reply.prompt_eval_duration),
        ("eval_count", reply.output_tokens),
        ("eval_duration", reply.eval_duration),
    )
    metrics: Doc = {name: value for name, value in fields if value}  # omitempty
    if reply.prompt_eval_cached_count is not None:
        metrics["prompt_eval_cached_count"] = reply.prompt_eval_cached_count
    return metrics


def _done_reason(reply: SimulatedReply) -> Doc:
    return {"done_reason": reply.done_reason} if reply.done_reason else {}


def _tool_calls(reply: SimulatedReply) -> list[Any]:
    return [dict(call) for call in reply.tool_calls or ()]


# --- /api/chat: ChatResponse{model, created_at, message, done, done_reason, Metrics} ---


def _chat_doc(message: Doc, model: str, done: bool) -> Doc:
    return {"model": model, "created_at": "", "message": message, "done": done}


def chat_stream(reply: SimulatedReply, model: str) -> tuple[list[Doc], Doc]:
    """The intermediate chunks and the final one."""
    chunks = [
        _chat_doc({"role": "assistant", "content": "", "thinking": piece}, model, False)
        for piece in reply.thinking
    ]
    chunks += [
        _chat_doc({"role": "assistant", "content": piece}, model, False) for piece in reply.tokens
    ]
    final_message: Doc = {"role": "assistant", "content": ""}
    if reply.tool_calls:
        calls: Doc = {"tool_calls": _tool_calls(reply)}
        if reply.tool_calls_on == "intermediate":
            chunks.append(_chat_doc({"role": "assistant", "content": "", **calls}, model, False))
        else:
            final_message.update(calls)
    final = _chat_doc(final_message, model, True) | _done_reason(reply) | _metrics(reply)
    return chunks, final


def chat_full(reply: SimulatedReply, model: str) -> Doc:
    message: Doc = {"role": "assistant", "content": "".join(reply.tokens)}
    if reply.thinking:
        message["thinking"] = "".join(reply.thinking)
    if reply.tool_calls:
        message["tool_calls"] = _tool_calls(reply)
    return _chat_doc(message, model, True) | _done_reason(reply) | _metrics(reply)


# --- /api/generate: GenerateResponse{model, created_at, response, thinking, done, done_reason,
#     context, Metrics, tool_calls} ---


def _generate_doc(response: str, model: str, done: bool, thinking: str = "") -> Doc:
    doc: Doc = {"model": model, "created_at": "", "response": response}
    if thinking:
        doc["thinking"] = thinking
    doc["done"] = done
    return doc


def _context(reply: SimulatedReply) -> list[int]:
    size = min(reply.prompt_eval_count + reply.output_tokens, _CONTEXT_CAP)
    return [(i * 7919) % 128_000 for i in range(1, size + 1)]


def _generate_final(doc: Doc, reply: SimulatedReply, raw: bool, with_tools: bool) -> Doc:
    doc |= _done_reason(reply)
    if not raw:  # Ollama sends the token context unless the prompt was raw
        doc["context"] = _context(reply)
    doc |= _metrics(reply)
    if reply.tool_calls and with_tools:
        doc["tool_calls"] = _tool_calls(reply)
    return doc


def generate_stream(reply: SimulatedReply, model: str, raw: bool) -> tuple[list[Doc], Doc]:
    chunks = [_generate_doc("", model, False, thinking=piece) for piece in reply.thinking]
    chunks += [_generate_doc(piece, model, False) for piece in reply.tokens]
    on_final = reply.tool_calls_on == "final"
    if reply.tool_calls and not on_final:
        chunks.append(_generate_doc("", model, False) | {"tool_calls": _tool_calls(reply)})
    return chunks, _generate_final(_generate_doc("", model, True), reply, raw, on_final)


def generate_full(reply: SimulatedReply, model: str, raw: bool) -> Doc:
    doc = _generate_doc("".join(reply.tokens), model, True, thinking="".join(reply.thinking))
    return _generate_final(doc, reply, raw, with_tools=True)


# --- /api/embed and /api/embeddings ---


def embedding_vector(text: str, dims: int) -> list[float]:
    """A unit vector that depends only on the text.

    Components stay inside (-1, 1) and away from 0, where Python and Go print floats alike.
    """
    rng = random.Random(hashlib.sha256(text.encode()).digest())
    raw = [rng.uniform(0.05, 1.0) * rng.choice((-1.0, 1.0)) for _ in range(dims)]
    norm = math.sqrt(sum(v * v for v in raw))
    return [round(v / norm, 6) for v in raw]


def embed(reply: SimulatedReply, model: str, inputs: list[str]) -> Doc:
    """EmbedResponse{model, embeddings, total_duration, load_duration, prompt_eval_count}."""
    doc: Doc = {
        "model": model,
        "embeddings": [embedding_vector(text, reply.embedding_dims) for text in inputs],
    }
    if not inputs:  # Ollama answers an empty input before running the model
        return doc
    fields = (
        ("total_duration", reply.total_duration),
        ("load_duration", reply.load_duration),
        ("prompt_eval_count", reply.prompt_eval_count),
    )
    return doc | {name: value for name, value in fields if value}


def embeddings_legacy(reply: SimulatedReply, prompt: str) -> Doc:
    """EmbeddingResponse: the vector only, no model and no counts."""
    return {"embedding": embedding_vector(prompt, reply.embedding_dims) if prompt else []}


# --- pass-through routes (no tokens): /api/tags, /api/ps, /api/show, /api/pull ---

_MODIFIED_AT = "2025-06-12T09:41:27.183920413+02:00"


def _digest(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()


def _details(name: str) -> Doc:
    embedding = "embed" in name
    family = "nomic-bert" if embedding else "llama"
    return {
        "parent_model": "",
        "format": "gguf",
        "family": family,
        "families": [family],
        "parameter_size": "137M" if embedding else "3.2B",
        "quantization_level": "F16" if embedding else "Q4_K_M",
    }


def tags(models: list[str]) -> Doc:
    return {
        "models": [
            {
                "name": name,
                "model": name,
                "modified_at": _MODIFIED_AT,
                "size": 2_019_393_189,
                "digest": _digest(name),
                "details": _details(name),
            }
            for name in models
        ]
    }


def ps(models: list[str], now_ns: int) -> Doc:
    expires = go_time(now_ns + 300 * 1_000_000_000)
    return {
        "models": [
            {
                "name": name,
                "model": name,
                "size": 3_825_819_519,
                "digest": _digest(name),
                "details": _details(name),
                "expires_at": expires,
                "size_vram": 3_825_819_519,
                "context_length": 4096,
            }
            for name in models
        ]
    }


def show(name: str) -> Doc:
    """ShowResponse{license, modelfile, parameters, template, details, model_info, capabilities,
    modified_at}."""
    embedding = "embed" in name
    return {
        "license": "LLAMA 3.2 COMMUNITY LICENSE AGREEMENT",
        "modelfile": f'# Modelfile generated by "ollama show"\nFROM {name}\n',
        "parameters": 'stop                           "<|eot_id|>"',
        "template": "{{ .Prompt }}",
        "details": _details(name),
        "model_info": {
            "general.architecture": "nomic-bert" if embedding else "llama",
            "general.parameter_count": 136_727_040 if embedding else 3_212_749_888,
            "llama.context_length": 131_072,
        },
        "capabilities": ["embedding"] if embedding else ["completion", "tools"],
        "modified_at": _MODIFIED_AT,
    }


def pull_progress(name: str) -> list[Doc]:
    """ProgressResponse{status, digest, total, completed} lines of a one-layer pull."""
    digest = f"sha256:{_digest(name)}"
    layer = f"pulling {_digest(name)[:12]}"
    total = 2_019_377_376
    return [
        {"status": "pulling manifest"},
        {"status": layer, "digest": digest, "total": total},
        {"status": layer, "digest": digest, "total": total, "completed": total // 2},
        {"status": layer, "digest": digest, "total": total, "completed": total},
        {"status": "verifying sha256 digest"},
        {"status": "writing manifest"},
        {"status": "success"},
    ]
