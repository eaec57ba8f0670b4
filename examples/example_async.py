"""Async: several calls at once on an `ollama.AsyncClient`, each attributed to its own customer.

`asyncio.gather` runs one call per customer concurrently. Each call's metadata stays with
it: `async with usage_metadata(...)` follows the asyncio task it is entered in, and
`usage_metadata=` belongs to its call alone, so concurrent calls never see each other's
fields. One of the calls is streamed.

Needs Ollama (`ollama serve`, then `ollama pull qwen2.5:0.5b`) at OLLAMA_HOST, and
REVENIUM_METERING_API_KEY in the environment or a .env file.

    python examples/example_async.py
"""

from __future__ import annotations

import asyncio
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
from revenium_ollama_transport import usage_metadata

MODEL = os.environ.get("OLLAMA_MODEL", "").strip() or "qwen2.5:0.5b"
HOST = os.environ.get("OLLAMA_HOST", "").strip() or "http://127.0.0.1:11434"

# (organization, subscriber, question): one concurrent call each.
CUSTOMERS = [
    ("acme-corp", "alice@acme.example", "What is 2 + 2?"),
    ("globex", "bob@globex.example", "Name a prime number."),
    ("initech", "carol@initech.example", "What colour is grass?"),
]


def transaction_id(response: object) -> str:
    """The `transactionId` of the response's metering record."""
    return str(getattr(response, "_revenium_transaction_id", "(not metered)"))


async def ask(client: ollama.AsyncClient, organization: str, email: str, question: str) -> str:
    """One customer's call, attributed with a block that covers this task only."""
    async with usage_metadata(
        organization_id=organization,
        subscriber={"email": email},
        trace_id=f"async-{organization}",
        task_type="quick-answer",
    ):
        response = await client.chat(model=MODEL, messages=[{"role": "user", "content": question}])
    return (
        f"{organization:<10} {question!r}: {response.message.content!r}\n"
        f"{'':<10} transaction id: {transaction_id(response)}"
    )


async def ask_streamed(client: ollama.AsyncClient) -> str:
    """A streamed call at the same time, with its metadata given on the call itself."""
    # ollama's type hints do not know the usage_metadata= keyword, hence the ignore.
    stream = await client.generate(  # type: ignore[call-overload]
        model=MODEL,
        prompt="Write a haiku about queues.",
        stream=True,
        usage_metadata={"organization_id": "umbrella", "task_type": "haiku"},
    )
    text: list[str] = []
    ids: set[str] = set()
    async for chunk in stream:
        text.append(chunk.response)
        ids.add(transaction_id(chunk))
    return (
        f"{'umbrella':<10} streamed haiku: {''.join(text)!r}\n"
        f"{'':<10} transaction id of its chunks: {', '.join(sorted(ids))}"
    )


async def run() -> None:
    client = ollama.AsyncClient()  # metered: made after the import; host from OLLAMA_HOST
    print(f"--- {len(CUSTOMERS) + 1} concurrent calls with asyncio.gather ---")
    results = await asyncio.gather(
        *(ask(client, *customer) for customer in CUSTOMERS), ask_streamed(client)
    )
    for line in results:
        print(line)


def main() -> int:
    try:
        asyncio.run(run())
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
