"""Streaming: tokens printed as they arrive, each chunk tagged with its call's transaction id.

1. A streamed chat: every chunk carries `_revenium_transaction_id`, the same for all
   chunks of one call; the record (`isStreamed: true`, with the time to first token) is
   sent once the final chunk is read.
2. A streamed generate stopped early with `break`: closing (or dropping) the stream ends
   the call, recorded as `CANCELLED` with the chunks received so far as its output tokens.

Needs Ollama (`ollama serve`, then `ollama pull qwen2.5:0.5b`) at OLLAMA_HOST, and
REVENIUM_METERING_API_KEY in the environment or a .env file.

    python examples/example_streaming.py
"""

from __future__ import annotations

import os
import sys

try:
    from dotenv import load_dotenv
except ImportError:  # python-dotenv is optional: plain environment variables work too
    pass
else:
    load_dotenv()

import httpx
import ollama

import revenium_ollama_transport

MODEL = os.environ.get("OLLAMA_MODEL", "").strip() or "qwen2.5:0.5b"
HOST = os.environ.get("OLLAMA_HOST", "").strip() or "http://127.0.0.1:11434"
EARLY_STOP = 3  # chunks to read from the second stream before stopping


def transaction_id(part: object) -> str:
    """The `transactionId` of the metering record of the call this chunk belongs to."""
    return str(getattr(part, "_revenium_transaction_id", "(not metered)"))


def streamed_chat() -> None:
    print("--- 1. a streamed chat, token by token ---")
    stream = ollama.chat(
        model=MODEL,
        messages=[{"role": "user", "content": "Count from one to five, in words."}],
        stream=True,
    )
    ids: set[str] = set()
    chunks = 0
    for chunk in stream:
        print(chunk.message.content, end="", flush=True)
        ids.add(transaction_id(chunk))
        chunks += 1
        if chunk.done:
            print(
                f"\n  done: {chunk.done_reason}, tokens in/out {chunk.prompt_eval_count}/"
                f"{chunk.eval_count}"
            )
    print(f"  {chunks} chunks, transaction id of every chunk: {', '.join(sorted(ids))}")


def stopped_early() -> None:
    print(f"--- 2. a streamed generate, stopped after {EARLY_STOP} chunks ---")
    stream = ollama.generate(model=MODEL, prompt="Tell me a long story.", stream=True)
    for index, chunk in enumerate(stream, start=1):
        print(chunk.response, end="", flush=True)
        if index == EARLY_STOP:
            print(f"\n  stopped early; transaction id: {transaction_id(chunk)} (CANCELLED)")
            break
    else:
        print("\n  the answer ended before that; recorded as completed")
    # The stream is closed when it is dropped (here, as this function returns): that ends
    # the call, and its record is queued.


def main() -> int:
    try:
        streamed_chat()
        stopped_early()
    # A stream connects at its first chunk, inside ollama's iterator, which lets httpx's
    # ConnectError through rather than turning it into a ConnectionError.
    except (ConnectionError, httpx.ConnectError):
        print(
            f"No Ollama answered at {HOST}. Start it with `ollama serve` "
            f"(then `ollama pull {MODEL}`), or set OLLAMA_HOST.",
            file=sys.stderr,
        )
        return 1
    except ollama.ResponseError as exc:
        print(
            f"Ollama refused the call: {exc.error} (pull the model: `ollama pull {MODEL}`)",
            file=sys.stderr,
        )
        return 1
    finally:
        # Records are delivered in the background; flush before a short script exits.
        revenium_ollama_transport.flush()
    print(f"metering: {revenium_ollama_transport.stats()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
