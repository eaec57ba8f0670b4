"""Basic metering: the import-only path, and an explicit ReveniumTransport.

1. Importing revenium_ollama_transport meters `ollama.chat` and `ollama.generate` as they
   are: no other change to the code.
2. `ollama.Client(transport=ReveniumTransport())` meters one client explicitly, which is
   what to use when you want metering on some clients only, or with your own transport
   settings.

Each response carries `_revenium_transaction_id`, the `transactionId` of its record.

Needs Ollama (`ollama serve`, then `ollama pull qwen2.5:0.5b`) at OLLAMA_HOST, and
REVENIUM_METERING_API_KEY in the environment or a .env file.

    python examples/example_simple.py
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

import ollama

import revenium_ollama_transport
from revenium_ollama_transport import ReveniumTransport

MODEL = os.environ.get("OLLAMA_MODEL", "").strip() or "qwen2.5:0.5b"
HOST = os.environ.get("OLLAMA_HOST", "").strip() or "http://127.0.0.1:11434"


def transaction_id(response: object) -> str:
    """The `transactionId` of the response's metering record."""
    return str(getattr(response, "_revenium_transaction_id", "(not metered)"))


def import_only() -> None:
    print("--- 1. metered by the import: ollama.chat and ollama.generate ---")
    chat = ollama.chat(
        model=MODEL,
        messages=[{"role": "user", "content": "Why is the sky blue? One sentence."}],
    )
    print(f"chat: {chat.message.content}")
    print(f"  tokens in/out: {chat.prompt_eval_count}/{chat.eval_count}")
    print(f"  transaction id: {transaction_id(chat)}")

    generated = ollama.generate(model=MODEL, prompt="Name three primary colours.")
    print(f"generate: {generated.response}")
    print(f"  transaction id: {transaction_id(generated)}")


def explicit_transport() -> None:
    print("--- 2. an explicit ReveniumTransport in an ollama.Client ---")
    # The transport takes the connection settings the client would otherwise use
    # (verify=, cert=, limits=, proxy=, retries=...), or an inner transport of your own.
    client = ollama.Client(host=HOST, transport=ReveniumTransport())
    chat = client.chat(
        model=MODEL,
        messages=[{"role": "user", "content": "Say hello in French."}],
    )
    print(f"chat: {chat.message.content}")
    print(f"  transaction id: {transaction_id(chat)}")


def main() -> int:
    try:
        import_only()
        explicit_transport()
    except ConnectionError:
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
