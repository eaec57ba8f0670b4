"""Every example in examples/, run as a user runs it: a fresh interpreter pointed at an Ollama
simulator and a fake metering API, with the records each one produced checked field by field.

demo.py has its own test (test_demo.py); the pytest example is run by pytest, in a subprocess.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from revenium_ollama_transport.testing import FakeMeteringAPI, OllamaSimulator, SimulatedReply

from ._processes import run_python
from ._upstream import UPSTREAM_METADATA
from .conftest import API_KEY

ROOT = Path(__file__).parent.parent
EXAMPLES = ROOT / "examples"
# Every script in examples/ and the test that runs it; demo.py is test_demo.py's.
TESTED = {
    "demo.py": "test_demo.py",
    "getting_started.py": "test_getting_started",
    "example_simple.py": "test_example_simple_from_a_copy_with_a_dotenv_file",
    "example_metadata.py": "test_example_metadata",
    "example_streaming.py": "test_example_streaming",
    "example_async.py": "test_example_async",
    "example_embeddings.py": "test_example_embeddings",
    "example_openai_compat.py": "test_example_openai_compat",
    "trace_visualization_example.py": "test_trace_visualization_example",
    "test_my_app.py": "test_the_pytest_example_passes",
}
# Variables from outside the REVENIUM_ / OLLAMA_ / OPENAI_ families (which run_python drops)
# that would change what the examples record: trace-field fallbacks, proxies. "" is unset
# for both the library and urllib.
NEUTRAL = dict.fromkeys(
    (
        "ENVIRONMENT",
        "DEPLOYMENT_ENV",
        "AWS_REGION",
        "AWS_DEFAULT_REGION",
        "AZURE_REGION",
        "GCP_REGION",
        "GOOGLE_CLOUD_REGION",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "http_proxy",
        "https_proxy",
        "all_proxy",
    ),
    "",
)
MODEL = "qwen2.5:0.5b"
# The credential value of the upstream metadata: sent in the record, never printed.
SECRET = UPSTREAM_METADATA["subscriber"]["credential"]["value"]


def run_example(
    name: str,
    sim: OllamaSimulator,
    api: FakeMeteringAPI,
    **env: str,
) -> subprocess.CompletedProcess[str]:
    """Runs examples/``name`` against ``sim`` and ``api``; it must succeed."""
    environment = {
        **NEUTRAL,
        "PYTHON_DOTENV_DISABLED": "1",  # a developer's .env must not change the results
        "OLLAMA_HOST": sim.host,
        "REVENIUM_METERING_API_KEY": API_KEY,
        "REVENIUM_METERING_BASE_URL": api.url,
        **env,
    }
    done = run_python(EXAMPLES / name, environment, cwd=ROOT, timeout=30)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    return done


def printed_ids(out: str) -> list[str]:
    """The transaction ids an example printed, in order."""
    return re.findall(r"transaction id(?: of every chunk| of its chunks)?: ([0-9a-f-]{36})", out)


def by_id(records: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {record["transactionId"]: record for record in records}


def in_call_order(out: str, api: FakeMeteringAPI, calls: int) -> list[dict[str, Any]]:
    """The records of the ``calls`` calls, in the order the example printed their ids (the
    order they arrive in is the delivery's, which runs several at once)."""
    records = api.records
    assert len(records) == calls, records
    ids = printed_ids(out)
    assert len(ids) == len(set(ids)) == calls, out
    recorded = by_id(records)
    return [recorded[transaction_id] for transaction_id in ids]


def test_every_example_is_tested() -> None:
    scripts = {path.name for path in EXAMPLES.glob("*.py")}
    assert scripts == set(TESTED), "an example without a test, or a test without its example"
    tests = {name for name in globals() if name.startswith("test_")}
    assert {test for name, test in TESTED.items() if name != "demo.py"} <= tests


def test_getting_started(sim: OllamaSimulator, api: FakeMeteringAPI) -> None:
    sim.reply = SimulatedReply(tokens=["Ready", "."], prompt_eval_count=9)
    out = run_example("getting_started.py", sim, api).stdout
    [record] = in_call_order(out, api, 1)
    assert "Ready." in out
    assert (record["operationType"], record["isStreamed"], record["model"]) == (
        "CHAT",
        False,
        MODEL,
    )
    assert (record["inputTokenCount"], record["outputTokenCount"]) == (9, 2)


def test_example_simple_from_a_copy_with_a_dotenv_file(
    tmp_path: Path, sim: OllamaSimulator, api: FakeMeteringAPI
) -> None:
    # As a user downloads one example next to their .env: the settings come from the file.
    script = tmp_path / "example_simple.py"
    shutil.copy(EXAMPLES / "example_simple.py", script)
    (tmp_path / ".env").write_text(
        f"OLLAMA_HOST={sim.host}\n"
        f"OLLAMA_MODEL=llama3.2:1b\n"
        f'REVENIUM_METERING_API_KEY="{API_KEY}"\n'
        f"REVENIUM_METERING_BASE_URL={api.url}\n"
    )
    sim.reply = SimulatedReply(tokens=["Bonjour", "!"], prompt_eval_count=11)
    done = run_python(script, NEUTRAL, cwd=tmp_path, timeout=30)  # no OLLAMA_, REVENIUM_
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout

    records = in_call_order(out, api, 3)
    assert [r["operationType"] for r in records] == ["CHAT", "GENERATE", "CHAT"]
    for record in records:
        assert record["model"] == "llama3.2:1b"
        assert record["isStreamed"] is False
        assert (record["inputTokenCount"], record["outputTokenCount"]) == (11, 2)
        assert "organizationName" not in record and "traceId" not in record
    assert [request.path for request in sim.requests] == ["/api/chat", "/api/generate", "/api/chat"]
    assert out.count("Bonjour!") == 3


def test_example_metadata(sim: OllamaSimulator, api: FakeMeteringAPI) -> None:
    out = run_example("example_metadata.py", sim, api).stdout

    full, classify, draft, rate = in_call_order(out, api, 4)
    # 1. every field of the upstream metadata table, on one call
    assert full["traceId"] == UPSTREAM_METADATA["trace_id"]
    assert full["taskType"] == UPSTREAM_METADATA["task_type"]
    assert full["subscriber"] == UPSTREAM_METADATA["subscriber"]
    assert full["organizationName"] == UPSTREAM_METADATA["organization_id"]
    assert full["subscriptionId"] == UPSTREAM_METADATA["subscription_id"]
    assert full["productName"] == UPSTREAM_METADATA["product_id"]
    assert full["agent"] == UPSTREAM_METADATA["agent"]
    assert full["responseQualityScore"] == 0.95
    # 2. a block, a nested block, and a call's own metadata over the block
    block = {
        "traceId": "conv-5f21c0aa",
        "organizationName": "globex",
        "productName": "helpdesk",
        "subscriber": {"id": "u-42", "email": "sam@globex.example"},
    }
    for record in (classify, draft, rate):
        assert {key: record.get(key) for key in block} == block
    assert (classify["agent"], classify.get("taskType")) == ("triage-agent", None)
    assert (draft["operationType"], draft["agent"], draft["taskType"]) == (
        "GENERATE",
        "writer-agent",
        "draft-reply",
    )
    assert (rate["agent"], rate["taskType"], rate["responseQualityScore"]) == (
        "triage-agent",
        "rate-reply",
        0.8,
    )
    # Metadata goes to the records only; the credential value is never printed.
    assert not any(b"acme-corp" in r.body or b"globex" in r.body for r in sim.requests)
    assert SECRET not in out


def test_example_streaming(sim: OllamaSimulator, api: FakeMeteringAPI) -> None:
    sim.queue(
        SimulatedReply(tokens=["One", ",", " two", ",", " three"], prompt_eval_count=15),
        SimulatedReply(tokens=["Once", " upon", " a", " time", ",", " a", " fox"]),
    )
    out = run_example("example_streaming.py", sim, api).stdout

    chat, story = in_call_order(out, api, 2)
    assert "One, two, three" in out
    assert "6 chunks" in out  # five tokens and the final chunk, all with the same id
    assert (chat["operationType"], chat["isStreamed"], chat["stopReason"]) == ("CHAT", True, "END")
    assert (chat["inputTokenCount"], chat["outputTokenCount"]) == (15, 5)
    assert "timeToFirstToken" in chat
    # Stopped after three chunks: cancelled, the chunks received counted as output.
    assert (story["operationType"], story["isStreamed"]) == ("GENERATE", True)
    assert story["stopReason"] == "CANCELLED"
    assert (story["inputTokenCount"], story["outputTokenCount"]) == (0, 3)


def _instant(stamp: str) -> datetime:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00"))


def test_example_async(sim: OllamaSimulator, api: FakeMeteringAPI) -> None:
    # Each answer waits a little, so the calls overlap only if they really run at once.
    sim.reply = SimulatedReply(tokens=["42"], first_byte_delay=0.3)
    out = run_example("example_async.py", sim, api).stdout

    records = api.records
    assert len(records) == 4
    assert max(_instant(r["requestTime"]) for r in records) < min(
        _instant(r["responseTime"]) for r in records
    ), "the four calls did not run concurrently"
    people = {
        "acme-corp": "alice@acme.example",
        "globex": "bob@globex.example",
        "initech": "carol@initech.example",
    }
    recorded = by_id(records)
    # Each printed line names its customer, then its call's transaction id.
    shown = re.findall(r"^(\S+) .*\n\s+transaction id[^:]*: (\S+)$", out, re.MULTILINE)
    assert len(shown) == 4
    for organization, transaction_id in shown:
        record = recorded[transaction_id]
        assert record["organizationName"] == organization
        if organization in people:
            assert record["subscriber"] == {"email": people[organization]}
            assert record["traceId"] == f"async-{organization}"
            assert (record["operationType"], record["isStreamed"]) == ("CHAT", False)
            assert record["taskType"] == "quick-answer"
        else:
            assert organization == "umbrella"
            assert (record["operationType"], record["isStreamed"]) == ("GENERATE", True)
            assert record["taskType"] == "haiku"
            assert "subscriber" not in record and "traceId" not in record


def test_example_embeddings(sim: OllamaSimulator, api: FakeMeteringAPI) -> None:
    sim.reply = SimulatedReply(prompt_eval_count=7, embedding_dims=16)
    out = run_example("example_embeddings.py", sim, api).stdout

    one, batch, legacy = in_call_order(out, api, 3)
    assert "16 dimensions" in out
    for record in (one, batch, legacy):
        assert (record["operationType"], record["isStreamed"]) == ("EMBED", False)
        assert (record["productName"], record["taskType"]) == ("knowledge-base", "index-documents")
        assert record["outputTokenCount"] == 0
    assert (one["inputTokenCount"], batch["inputTokenCount"]) == (7, 7)
    assert legacy["inputTokenCount"] == 0  # the legacy route reports no counts
    embed, embed_batch, embeddings = sim.requests
    assert [embed.path, embed_batch.path, embeddings.path] == [
        "/api/embed",
        "/api/embed",
        "/api/embeddings",
    ]
    assert len(embed_batch.json["input"]) == 3


def test_example_openai_compat(sim: OllamaSimulator, api: FakeMeteringAPI) -> None:
    sim.reply = SimulatedReply(tokens=["Rayleigh", " scattering", "."], prompt_eval_count=20)
    out = run_example("example_openai_compat.py", sim, api).stdout

    # openai responses carry no transaction id: the records are told apart by task type.
    tasks = {record.get("taskType"): record for record in api.records}
    assert len(api.records) == 3 and set(tasks) == {"explain", "count", "greet"}
    plain, streamed, module_level = tasks["explain"], tasks["count"], tasks["greet"]
    assert out.count("Rayleigh scattering.") == 3
    assert [request.path for request in sim.requests] == ["/v1/chat/completions"] * 3
    for record in (plain, streamed, module_level):
        assert record["operationType"] == "CHAT"
        assert (record["inputTokenCount"], record["outputTokenCount"]) == (20, 3)
        assert record["organizationName"] == "acme-corp"
    expected = {
        "traceId": "conv-openai-1",
        "subscriber": {"id": "u-7", "email": "dev@example.com"},
        "productName": "docs-assistant",
        "agent": "openai-compat-agent",
    }
    for record in (plain, streamed):
        assert {key: record.get(key) for key in expected} == expected
    assert (plain["isStreamed"], plain["taskType"]) == (False, "explain")
    assert (streamed["isStreamed"], streamed["taskType"]) == (True, "count")
    assert (module_level["isStreamed"], module_level["taskType"]) == (False, "greet")
    assert "traceId" not in module_level
    # usage_metadata never reaches Ollama; the stream's usage was asked for by the transport.
    bodies = [request.json for request in sim.requests]
    assert not any("usage_metadata" in body for body in bodies)
    assert bodies[1]["stream_options"] == {"include_usage": True}


def test_trace_visualization_example(sim: OllamaSimulator, api: FakeMeteringAPI) -> None:
    out = run_example(
        "trace_visualization_example.py",
        sim,
        api,
        REVENIUM_ENVIRONMENT="staging",
        AWS_REGION="eu-central-1",  # a fallback: REVENIUM_REGION is not set
        REVENIUM_RETRY_NUMBER="2",
    ).stdout

    from_env, parent, child, retry = in_call_order(out, api, 4)
    assert "(AWS_REGION)" in out and "(REVENIUM_TRACE_TYPE, set by this example)" in out
    # 1. every trace field from the environment: the run's variables, else the demo values
    assert from_env["environment"] == "staging"
    assert from_env["region"] == "eu-central-1"
    assert from_env["credentialAlias"] == "local-ollama"
    assert from_env["traceType"] == "batch-job"
    assert from_env["traceName"] == "Nightly log summary"
    assert from_env["parentTransactionId"] == "job-2024-06-01"
    assert from_env["transactionName"] == "Summarise logs"
    assert from_env["retryNumber"] == 2
    # 2. metadata over the environment, field by field
    workflow = {
        "traceType": "customer-support",
        "traceName": "Support ticket #4521",
        "environment": "production",
        "region": "eu-west-1",
        "credentialAlias": "support-ollama-key",
    }
    for record in (parent, child, retry):
        assert {key: record.get(key) for key in workflow} == workflow
    assert parent["transactionName"] == "Classify ticket"
    assert (parent["parentTransactionId"], parent["retryNumber"]) == ("job-2024-06-01", 2)
    for record, retry_number in ((child, 0), (retry, 1)):
        assert record["transactionName"] == "Draft reply"
        assert record["parentTransactionId"] == parent["transactionId"]
        assert record["retryNumber"] == retry_number


def test_the_pytest_example_passes() -> None:
    # A user's own test suite, run as they would run it: `pytest examples/test_my_app.py`.
    # It starts its own simulator and fake API, so it needs neither Ollama nor a key.
    pytest_main = Path(pytest.__file__).with_name("__main__.py")
    done = run_python(
        pytest_main,
        {**NEUTRAL, "PYTHON_DOTENV_DISABLED": "1"},
        str(EXAMPLES / "test_my_app.py"),
        "-q",
        "-p",
        "no:cacheprovider",
        cwd=ROOT,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert re.search(r"\b5 passed\b", done.stdout), done.stdout


@pytest.mark.parametrize(
    "name",
    [
        "getting_started.py",
        "example_simple.py",
        "example_metadata.py",
        "example_streaming.py",
        "example_async.py",
        "example_embeddings.py",
        "example_openai_compat.py",
        "trace_visualization_example.py",
    ],
)
def test_an_example_without_ollama_says_what_to_do(name: str) -> None:
    with OllamaSimulator() as gone:  # a port where nothing answers
        nowhere = gone.host
    done = run_python(
        EXAMPLES / name,
        {**NEUTRAL, "PYTHON_DOTENV_DISABLED": "1", "OLLAMA_HOST": nowhere},
        cwd=ROOT,
        timeout=30,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    [hint] = [line for line in done.stderr.splitlines() if line.startswith("No Ollama answered")]
    assert nowhere in hint
    assert "ollama serve" in hint and "OLLAMA_HOST" in hint
