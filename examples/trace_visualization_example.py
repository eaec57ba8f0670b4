"""Trace visualization fields: from the environment, and from `usage_metadata`.

Eight fields place a call in a deployment and a workflow: `environment`, `region`,
`credential_alias`, `trace_type`, `trace_name`, `parent_transaction_id`,
`transaction_name` and `retry_number`.

1. From environment variables, set once per deployment (first variable set wins, e.g.
   `REVENIUM_REGION`, then `AWS_REGION`...). Fields with none of their variables set get a
   demo value here, so that every field shows up.
2. From `usage_metadata`: a workflow of three calls. A block gives the workflow's trace
   type and name; each call names its step, the child calls point at the first call's
   transaction id as their parent, and a retried step says which retry it is. Metadata
   wins over the environment field by field; fields it leaves out still come from the
   environment.

Needs Ollama (`ollama serve`, then `ollama pull qwen2.5:0.5b`) at OLLAMA_HOST, and
REVENIUM_METERING_API_KEY in the environment or a .env file.

    python examples/trace_visualization_example.py
    REVENIUM_ENVIRONMENT=staging AWS_REGION=eu-west-1 python examples/trace_visualization_example.py
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from typing import Any

try:
    from dotenv import load_dotenv
except ImportError:  # python-dotenv is optional: plain environment variables work too
    pass
else:
    load_dotenv()

import ollama

import revenium_ollama_transport
from revenium_ollama_transport import usage_metadata

MODEL = os.environ.get("OLLAMA_MODEL", "").strip() or "qwen2.5:0.5b"
HOST = os.environ.get("OLLAMA_HOST", "").strip() or "http://127.0.0.1:11434"

# field -> (its variables, the first one set wins; a demo value used when none is set)
ENVIRONMENT_FIELDS: dict[str, tuple[tuple[str, ...], str]] = {
    "environment": (("REVENIUM_ENVIRONMENT", "ENVIRONMENT", "DEPLOYMENT_ENV"), "development"),
    "region": (
        (
            "REVENIUM_REGION",
            "AWS_REGION",
            "AWS_DEFAULT_REGION",
            "AZURE_REGION",
            "GCP_REGION",
            "GOOGLE_CLOUD_REGION",
        ),
        "us-east-1",
    ),
    "credential_alias": (("REVENIUM_CREDENTIAL_ALIAS",), "local-ollama"),
    "trace_type": (("REVENIUM_TRACE_TYPE",), "batch-job"),
    "trace_name": (("REVENIUM_TRACE_NAME",), "Nightly log summary"),
    "parent_transaction_id": (("REVENIUM_PARENT_TRANSACTION_ID",), "job-2024-06-01"),
    "transaction_name": (("REVENIUM_TRANSACTION_NAME",), "Summarise logs"),
    "retry_number": (("REVENIUM_RETRY_NUMBER",), "0"),
}


def transaction_id(response: object) -> str:
    """The `transactionId` of the response's metering record."""
    return str(getattr(response, "_revenium_transaction_id", "(not metered)"))


def ask(prompt: str, metadata: Mapping[str, Any] | None = None) -> str:
    """One metered chat call; returns its transaction id."""
    # ollama's type hints do not know the usage_metadata= keyword, hence the ignore.
    response = ollama.chat(  # type: ignore[call-overload]
        model=MODEL,
        messages=[{"role": "user", "content": prompt}],
        usage_metadata=metadata,
    )
    print(f"  answer: {response.message.content}")
    print(f"  transaction id: {transaction_id(response)}")
    return transaction_id(response)


def from_the_environment() -> None:
    print("--- 1. trace fields from environment variables ---")
    for field, (names, demo) in ENVIRONMENT_FIELDS.items():
        name = next((name for name in names if os.environ.get(name, "").strip()), None)
        note = ""
        if name is None:
            name, note = names[0], ", set by this example"
            os.environ[name] = demo  # in a deployment: your .env file or the platform
        print(f"  {field:<22} = {os.environ[name]!r:<26} ({name}{note})")
    print("a call with no metadata carries all eight:")
    ask("Summarise: 3 errors, 120 warnings overnight.")


def from_metadata() -> None:
    print("--- 2. trace fields from usage_metadata: a workflow of three calls ---")
    workflow = {
        "trace_type": "customer-support",
        "trace_name": "Support ticket #4521",
        "environment": "production",
        "region": "eu-west-1",
        "credential_alias": "support-ollama-key",
    }
    with usage_metadata(workflow):
        print("step 1, the parent (parent_transaction_id, retry_number: from the environment):")
        parent = ask("Classify: 'I was charged twice'.", {"transaction_name": "Classify ticket"})

        step = {"transaction_name": "Draft reply", "parent_transaction_id": parent}
        print(f"step 2, a child of {parent}:")
        ask("Draft a one-line apology.", {**step, "retry_number": 0})
        print("step 2 again, its first retry:")
        ask("Draft a one-line apology.", {**step, "retry_number": 1})


def main() -> int:
    try:
        from_the_environment()
        from_metadata()
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
