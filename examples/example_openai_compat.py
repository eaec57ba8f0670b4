"""The openai SDK on Ollama's OpenAI-compatible API (`/v1`), metered.

1. `revenium_ollama_transport.openai_client()`: an `openai.OpenAI` for OLLAMA_HOST's
   `/v1/` whose calls are metered, in one call. A chat completion with `usage_metadata=`.
2. The same client, streamed: tokens printed as they arrive. Ollama sends no token counts
   in a stream unless asked; the transport asks on your behalf and takes the extra usage
   event back out, so the chunks are the ones you would get without metering.
3. The upstream example as it is: `openai.api_key` / `openai.base_url` set on the module
   and `openai.chat.completions.create(..., usage_metadata=...)`. Any openai client made
   after the import is metered unless it points at a hosted API (api.openai.com, Azure).

Needs Ollama (`ollama serve`, then `ollama pull qwen2.5:0.5b`) at OLLAMA_HOST, the openai
package (`pip install openai`), and REVENIUM_METERING_API_KEY in the environment or a .env
file.

    python examples/example_openai_compat.py
"""

from __future__ import annotations

import os
import sys
from typing import Any

try:
    from dotenv import load_dotenv
except ImportError:  # python-dotenv is optional: plain environment variables work too
    pass
else:
    load_dotenv()

import openai

import revenium_ollama_transport

MODEL = os.environ.get("OLLAMA_MODEL", "").strip() or "qwen2.5:0.5b"
HOST = os.environ.get("OLLAMA_HOST", "").strip() or "http://127.0.0.1:11434"
# Ollama's OpenAI-compatible API, as openai_client() derives it from OLLAMA_HOST.
BASE_URL = (HOST if "://" in HOST else f"http://{HOST}").rstrip("/") + "/v1/"

METADATA: dict[str, Any] = {
    "trace_id": "conv-openai-1",
    "task_type": "explain",
    "subscriber": {"id": "u-7", "email": "dev@example.com"},
    "organization_id": "acme-corp",
    "product_id": "docs-assistant",
    "agent": "openai-compat-agent",
}


def non_streamed(client: Any) -> None:
    print("--- 1. openai_client(): a chat completion with usage_metadata= ---")
    response = client.chat.completions.create(
        model=MODEL,
        messages=[
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "Why is the sky blue? One sentence."},
        ],
        usage_metadata=METADATA,  # metering only: taken out before the request leaves
    )
    print(response.choices[0].message.content)
    usage = response.usage
    print(f"  tokens in/out: {usage.prompt_tokens}/{usage.completion_tokens}")
    print(f"  response id: {response.id} (Ollama's; the record has its own transactionId)")


def streamed(client: Any) -> None:
    print("--- 2. the same client, streamed ---")
    stream = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Count from one to five, in words."}],
        stream=True,
        usage_metadata={**METADATA, "task_type": "count"},
    )
    chunks = 0
    for chunk in stream:
        chunks += 1
        if chunk.choices and chunk.choices[0].delta.content:
            print(chunk.choices[0].delta.content, end="", flush=True)
    # No usage chunk reaches us: the transport asked Ollama for one and took it back out.
    print(f"\n  {chunks} chunks")


def module_level_client() -> None:
    print("--- 3. the openai module's own client, as in the upstream example ---")
    # Any OpenAI client made after the import is metered unless its base URL is a hosted
    # API (api.openai.com, Azure): the module-level one included.
    openai.api_key = "ollama"
    openai.base_url = BASE_URL
    # The SDK's type hints do not know the usage_metadata= keyword, hence the ignore.
    response = openai.chat.completions.create(  # type: ignore[call-overload]
        model=MODEL,
        messages=[{"role": "user", "content": "Say hello in Spanish."}],
        usage_metadata={"organization_id": "acme-corp", "task_type": "greet"},
    )
    print(response.choices[0].message.content)


def main() -> int:
    try:
        client = revenium_ollama_transport.openai_client()  # OLLAMA_HOST's /v1/, metered
        non_streamed(client)
        streamed(client)
        module_level_client()
    except openai.APIConnectionError:
        print(
            f"No Ollama answered at {BASE_URL}. Start it with `ollama serve` "
            f"(then `ollama pull {MODEL}`), or set OLLAMA_HOST.",
            file=sys.stderr,
        )
        return 1
    except openai.APIStatusError as exc:
        print(
            f"Ollama refused the call: {exc.status_code} {exc.message} "
            f"(pull the model: `ollama pull {MODEL}`)",
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
