"""Native Ollama response bodies as the server frames them, for parser and split tests."""

from __future__ import annotations

import orjson

CREATED = "2024-07-22T20:16:05.213393Z"


def chat_line(content: str, **message: object) -> bytes:
    obj = {
        "model": "qwen2.5:0.5b",
        "created_at": CREATED,
        "message": {"role": "assistant", "content": content, **message},
        "done": False,
    }
    return orjson.dumps(obj) + b"\n"


def generate_line(text: str) -> bytes:
    obj = {"model": "qwen2.5:0.5b", "created_at": CREATED, "response": text, "done": False}
    return orjson.dumps(obj) + b"\n"


def final_line(route: str = "chat", prompt: int = 12, output: int = 3, **extra: object) -> bytes:
    obj: dict[str, object] = {"model": "qwen2.5:0.5b", "created_at": CREATED}
    if route == "chat":
        obj["message"] = {"role": "assistant", "content": ""}
    else:
        obj["response"] = ""
    obj.update(
        {
            "done_reason": "stop",
            "done": True,
            "total_duration": 5_000_000,
            "load_duration": 1_000_000,
            "prompt_eval_count": prompt,
            "prompt_eval_duration": 2_000_000,
            "eval_count": output,
            "eval_duration": 2_000_000,
        }
    )
    obj.update(extra)
    return orjson.dumps(obj) + b"\n"


TOOL_CALL = {"function": {"name": "get_weather", "arguments": {"city": "Paris", "done": False}}}

CHAT_STREAM = chat_line("Hello") + chat_line(" there") + chat_line("!") + final_line()
GENERATE_STREAM = generate_line("Hi") + generate_line(" you") + final_line("generate", output=2)
TOOL_STREAM = chat_line("", tool_calls=[TOOL_CALL]) + final_line(output=9, done_reason="stop")
THINKING_STREAM = (
    chat_line("", thinking="hmm") + chat_line("", thinking=" ok") + chat_line("Yes") + final_line()
)
ERROR_STREAM = chat_line("Hel") + chat_line("lo") + b'{"error":"model runner crashed"}\n'
NON_STREAMED_CHAT = final_line(prompt=20, output=7).rstrip(b"\n")
EMBED_BODY = orjson.dumps(
    {
        "model": "all-minilm",
        "embeddings": [[0.1, -0.2, 0.3], [0.4, 0.5, -0.6]],
        "total_duration": 14_000_000,
        "load_duration": 1_000_000,
        "prompt_eval_count": 8,
    }
)
LEGACY_EMBEDDINGS_BODY = orjson.dumps({"embedding": [0.1, 0.2, 0.3]})

ALL_BODIES = {
    "chat_stream": CHAT_STREAM,
    "generate_stream": GENERATE_STREAM,
    "tool_stream": TOOL_STREAM,
    "thinking_stream": THINKING_STREAM,
    "error_stream": ERROR_STREAM,
    "non_streamed_chat": NON_STREAMED_CHAT,
    "embed": EMBED_BODY,
    "legacy_embeddings": LEGACY_EMBEDDINGS_BODY,
}
