"""Embeddings: `embed` (one text or a batch) and the legacy `embeddings`, both metered.

Each call is one `EMBED` record. `embed` reports the input tokens Ollama counted; the
legacy `/api/embeddings` route reports no token counts, so its record has zero tokens.

Needs Ollama (`ollama serve`, then `ollama pull` the model) at OLLAMA_HOST, and
REVENIUM_METERING_API_KEY in the environment or a .env file. The model is
OLLAMA_EMBED_MODEL if set, else OLLAMA_MODEL (default qwen2.5:0.5b, which can embed
too; a dedicated model such as nomic-embed-text gives better vectors).

    python examples/example_embeddings.py
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

try:
    from dotenv import load_dotenv
except ImportError:  # python-dotenv is optional: plain environment variables work too
    pass
else:
    load_dotenv()

import ollama

import revenium_ollama_transport
from revenium_ollama_transport import usage_metadata

MODEL = (
    os.environ.get("OLLAMA_EMBED_MODEL", "").strip()
    or os.environ.get("OLLAMA_MODEL", "").strip()
    or "qwen2.5:0.5b"
)
HOST = os.environ.get("OLLAMA_HOST", "").strip() or "http://127.0.0.1:11434"
DOCUMENTS = [
    "Invoices are sent on the first day of each month.",
    "Refunds take five to seven business days.",
    "Support is open from 9am to 5pm, Monday to Friday.",
]


def transaction_id(response: object) -> str:
    """The `transactionId` of the response's metering record."""
    return str(getattr(response, "_revenium_transaction_id", "(not metered)"))


def preview(vector: Sequence[float]) -> str:
    return f"{len(vector)} dimensions, [{', '.join(f'{x:.3f}' for x in vector[:3])}, ...]"


def run() -> None:
    # The block attributes every embedding call below to the same product and task.
    with usage_metadata(product_id="knowledge-base", task_type="index-documents"):
        print("--- 1. embed, one text ---")
        one = ollama.embed(model=MODEL, input="How long does a refund take?")
        print(f"vector: {preview(one.embeddings[0])}")
        print(f"  input tokens: {one.prompt_eval_count}")
        print(f"  transaction id: {transaction_id(one)}")

        print(f"--- 2. embed, a batch of {len(DOCUMENTS)} texts in one call ---")
        batch = ollama.embed(model=MODEL, input=DOCUMENTS)
        for document, vector in zip(DOCUMENTS, batch.embeddings, strict=True):
            print(f"{document[:40]!r:<44} {preview(vector)}")
        print(f"  input tokens: {batch.prompt_eval_count}")
        print(f"  transaction id: {transaction_id(batch)}")

        print("--- 3. the legacy embeddings API (one prompt, no token counts) ---")
        legacy = ollama.embeddings(model=MODEL, prompt="How long does a refund take?")
        print(f"vector: {preview(legacy.embedding)}")
        print(f"  transaction id: {transaction_id(legacy)}")


def main() -> int:
    try:
        run()
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
