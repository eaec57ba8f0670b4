"""Getting started: one chat call to Ollama, metered and reported to Revenium.

Importing revenium_ollama_transport is the only change to plain ollama code. Needs Ollama
(`ollama serve`, then `ollama pull qwen2.5:0.5b`) at OLLAMA_HOST, and
REVENIUM_METERING_API_KEY in the environment or a .env file. `make demo` runs this file
against the package's Ollama simulator and a local fake metering API when either is
missing.
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

MODEL = os.environ.get("OLLAMA_MODEL", "qwen2.5:0.5b")


def main() -> int:
    try:
        response = ollama.chat(
            model=MODEL,
            messages=[{"role": "user", "content": "Please verify you are ready to assist me."}],
        )
    except ConnectionError:
        host = os.environ.get("OLLAMA_HOST", "http://127.0.0.1:11434")
        print(
            f"No Ollama answered at {host}. Start it with `ollama serve`, set OLLAMA_HOST, "
            "or run `make demo`, which falls back to the bundled simulator.",
            file=sys.stderr,
        )
        return 1
    except ollama.ResponseError as exc:
        print(
            f"Ollama refused the call: {exc.error} (pull the model: `ollama pull {MODEL}`)",
            file=sys.stderr,
        )
        return 1
    print(response.message.content)
    print(f"transaction id: {response._revenium_transaction_id}")  # type: ignore[attr-defined]
    # Records are delivered in the background; flush before a short script exits
    # (interpreter exit flushes too, within REVENIUM_SHUTDOWN_TIMEOUT).
    revenium_ollama_transport.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
