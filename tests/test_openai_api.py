"""The openai SDK pointed at Ollama's /v1 API through the transport, over httpx2 and httpx,
sync and async, against the simulator; records checked field by field."""

from __future__ import annotations

import asyncio
import json
import re
import textwrap
from pathlib import Path
from typing import Any

import httpx
import httpx2
import openai
import pytest

import revenium_ollama_transport as metering
from revenium_ollama_transport import AsyncReveniumTransport, ReveniumTransport
from revenium_ollama_transport.testing import FakeMeteringAPI, OllamaSimulator, SimulatedReply

from ._processes import run_python
from ._upstream import UPSTREAM_METADATA
from .conftest import API_KEY

MODEL = "gemma2:2b"
MESSAGES: list[Any] = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "Why is the sky blue?"},
]
FIXED = "2025-01-02T03:04:05.123456789Z"
IDS = re.compile(rb"(chatcmpl|cmpl|resp|msg)-?_?[0-9]+")


def sdk(sim: OllamaSimulator, family: str, **kwargs: Any) -> Any:
    """An OpenAI client on Ollama whose HTTP client has the transport (typed Any: type
    checkers do not know ``usage_metadata=``)."""
    http: Any = (
        httpx2.Client(transport=ReveniumTransport())
        if family == "httpx2"
        else httpx.Client(transport=ReveniumTransport())
    )
    kwargs.setdefault("max_retries", 0)
    return openai.OpenAI(base_url=f"{sim.url}/v1/", api_key="ollama", http_client=http, **kwargs)


@pytest.fixture(params=["httpx2", "httpx"])
def family(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def records(api: FakeMeteringAPI) -> list[dict[str, Any]]:
    assert metering.flush(10.0)
    return api.records


def the_record(api: FakeMeteringAPI) -> dict[str, Any]:
    [record] = records(api)
    assert None not in record.values()
    assert record["provider"] == "OLLAMA"
    assert not record["transactionId"].startswith(("chatcmpl", "cmpl"))
    return record


def test_chat_not_streamed(sim: OllamaSimulator, metered: FakeMeteringAPI, family: str) -> None:
    sim.reply = SimulatedReply(tokens=["Rayleigh", " scattering"], prompt_eval_count=21)
    response = sdk(sim, family).chat.completions.create(model=MODEL, messages=MESSAGES)
    assert response.choices[0].message.content == "Rayleigh scattering"
    record = the_record(metered)
    assert record["model"] == MODEL
    assert (record["operationType"], record["isStreamed"], record["stopReason"]) == (
        "CHAT",
        False,
        "END",
    )
    assert (record["inputTokenCount"], record["outputTokenCount"]) == (21, 2)
    assert record["systemFingerprint"] == "fp_ollama"
    assert record["retryNumber"] == 0


def bare_chunks(sim: OllamaSimulator, **kwargs: Any) -> list[dict[str, Any]]:
    """The chunks the SDK yields with no metering anywhere."""
    metering.uninstall()
    try:
        with openai.OpenAI(base_url=f"{sim.url}/v1/", api_key="ollama") as client:
            return [normalised(c) for c in client.chat.completions.create(**kwargs)]
    finally:
        metering.install()


def normalised(chunk: Any) -> dict[str, Any]:
    dumped: dict[str, Any] = chunk.model_dump()
    dumped.pop("id", None)
    return dumped


def test_chat_stream_without_include_usage_looks_untouched(
    sim: OllamaSimulator, metered: FakeMeteringAPI, family: str
) -> None:
    sim.reply = SimulatedReply(tokens=["a", "b", "c"], prompt_eval_count=9, created_at=FIXED)
    asked: dict[str, Any] = {"model": MODEL, "messages": MESSAGES, "stream": True}
    chunks = [normalised(c) for c in sdk(sim, family).chat.completions.create(**asked)]
    assert all(chunk["choices"] for chunk in chunks)  # no extra usage chunk
    assert chunks == bare_chunks(sim, **asked)
    forwarded = sim.requests[0].json
    assert forwarded is not None
    assert forwarded["stream_options"] == {"include_usage": True}  # asked on its behalf
    [record] = records(metered)
    assert (record["inputTokenCount"], record["outputTokenCount"]) == (9, 3)
    assert (record["isStreamed"], record["stopReason"]) == (True, "END")
    assert "timeToFirstToken" in record


def test_chat_stream_that_asked_for_usage_passes_byte_for_byte(
    sim: OllamaSimulator, metered: FakeMeteringAPI
) -> None:
    sim.reply = SimulatedReply(tokens=["x", "y"], prompt_eval_count=4, created_at=FIXED)
    body = {"model": MODEL, "messages": MESSAGES, "stream": True}
    body["stream_options"] = {"include_usage": True}

    def read(transport: Any) -> bytes:
        with httpx2.Client(transport=transport) as client:
            answer = client.post(f"{sim.url}/v1/chat/completions", json=body)
            return IDS.sub(b"ID", answer.content)

    assert read(ReveniumTransport()) == read(httpx2.HTTPTransport())
    [record] = records(metered)  # the plain transport's read is not metered
    assert (record["inputTokenCount"], record["outputTokenCount"]) == (4, 2)


def test_completions_stream_without_usage_loses_the_zero_usage_too(
    sim: OllamaSimulator, metered: FakeMeteringAPI, family: str
) -> None:
    sim.reply = SimulatedReply(tokens=["1", "2", "3", "4"], prompt_eval_count=3, created_at=FIXED)
    chunks = list(sdk(sim, family).completions.create(model=MODEL, prompt="count", stream=True))
    assert all(chunk.usage is None for chunk in chunks)
    assert "".join(chunk.choices[0].text for chunk in chunks if chunk.choices) == "1234"
    record = the_record(metered)
    assert (record["operationType"], record["inputTokenCount"], record["outputTokenCount"]) == (
        "GENERATE",
        3,
        4,
    )


def test_embeddings(sim: OllamaSimulator, metered: FakeMeteringAPI, family: str) -> None:
    sim.reply = SimulatedReply(prompt_eval_count=7, embedding_dims=12)
    response = sdk(sim, family).embeddings.create(model="all-minilm", input=["a", "b"])
    assert len(response.data) == 2
    record = the_record(metered)
    assert (record["operationType"], record["inputTokenCount"], record["outputTokenCount"]) == (
        "EMBED",
        7,
        0,
    )
    assert record["model"] == "all-minilm"


@pytest.mark.parametrize("stream", [False, True])
def test_responses(sim: OllamaSimulator, metered: FakeMeteringAPI, stream: bool) -> None:
    sim.reply = SimulatedReply(tokens=["Hi", " there"], prompt_eval_count=11)
    client = sdk(sim, "httpx2")
    if stream:
        events = list(client.responses.create(model=MODEL, input="hello", stream=True))
        assert events[-1].type == "response.completed"
    else:
        assert client.responses.create(model=MODEL, input="hello").output_text == "Hi there"
    record = the_record(metered)
    assert (record["operationType"], record["isStreamed"], record["stopReason"]) == (
        "CHAT",
        stream,
        "END",
    )
    assert (record["inputTokenCount"], record["outputTokenCount"]) == (11, 2)


def test_tool_calls(sim: OllamaSimulator, metered: FakeMeteringAPI) -> None:
    call = {"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}
    sim.reply = SimulatedReply(tokens=[], tool_calls=[call], eval_count=8)
    chunks = list(
        sdk(sim, "httpx2").chat.completions.create(model=MODEL, messages=MESSAGES, stream=True)
    )
    assert any(c.choices and c.choices[0].delta.tool_calls for c in chunks)
    record = the_record(metered)
    assert (record["operationType"], record["stopReason"]) == ("TOOL_CALL", "END_SEQUENCE")


def test_mid_stream_failure_read_to_the_end_is_an_error(
    sim: OllamaSimulator, metered: FakeMeteringAPI, family: str
) -> None:
    sim.reply = SimulatedReply(tokens=["a", "b", "c", "d"], error_after=2, error="runner died")
    chunks = list(
        sdk(sim, family).chat.completions.create(model=MODEL, messages=MESSAGES, stream=True)
    )
    assert chunks  # Ollama swallows the error: the SDK just stops
    record = the_record(metered)
    assert record["stopReason"] == "ERROR"
    assert record["outputTokenCount"] >= 2


def test_early_break_is_cancelled(sim: OllamaSimulator, metered: FakeMeteringAPI) -> None:
    sim.reply = SimulatedReply(tokens=[f"t{i}" for i in range(40)], chunk_delay=0.01)
    stream = sdk(sim, "httpx2").chat.completions.create(model=MODEL, messages=MESSAGES, stream=True)
    for _ in stream:
        break
    stream.close()
    record = the_record(metered)
    assert record["stopReason"] == "CANCELLED"
    assert 1 <= record["outputTokenCount"] < 40


def test_http_error(sim: OllamaSimulator, metered: FakeMeteringAPI, family: str) -> None:
    sim.reply = SimulatedReply(status=404, error='model "nope" not found, try pulling it first')
    with pytest.raises(openai.NotFoundError):
        sdk(sim, family).chat.completions.create(model="nope", messages=MESSAGES)
    record = the_record(metered)
    assert (record["stopReason"], record["errorCode"]) == ("ERROR", 404)
    assert record["errorReason"] == 'model "nope" not found, try pulling it first'


def test_each_sdk_retry_is_its_own_record(sim: OllamaSimulator, metered: FakeMeteringAPI) -> None:
    sim.queue(SimulatedReply(status=503, error="server busy"))
    client = sdk(sim, "httpx2", max_retries=2)
    client.with_options(timeout=5).chat.completions.create(model=MODEL, messages=MESSAGES)
    attempts = sorted(records(metered), key=lambda r: r["retryNumber"])
    assert [(r["retryNumber"], r["stopReason"]) for r in attempts] == [(0, "ERROR"), (1, "END")]
    assert attempts[0]["errorCode"] == 503
    assert len({r["transactionId"] for r in attempts}) == 2


def test_extra_body_metadata_never_reaches_ollama(
    sim: OllamaSimulator, metered: FakeMeteringAPI
) -> None:
    sdk(sim, "httpx2").chat.completions.create(
        model=MODEL, messages=MESSAGES, extra_body={"usage_metadata": {"trace_id": "conv-1"}}
    )
    assert "usage_metadata" not in sim.requests[0].json
    assert the_record(metered)["traceId"] == "conv-1"


def test_usage_metadata_keyword_on_an_installed_client(
    sim: OllamaSimulator, metered: FakeMeteringAPI
) -> None:
    client: Any = openai.OpenAI(base_url=f"{sim.url}/v1/", api_key="ollama", max_retries=0)
    client.chat.completions.create(model=MODEL, messages=MESSAGES, usage_metadata=UPSTREAM_METADATA)
    client.embeddings.create(model="m", input="x", usage_metadata={"agent": "embedder"})
    by_operation = {r["operationType"]: r for r in records(metered)}
    assert by_operation["CHAT"]["organizationName"] == "acme-corp"
    assert by_operation["CHAT"]["subscriber"] == UPSTREAM_METADATA["subscriber"]
    assert by_operation["EMBED"]["agent"] == "embedder"
    assert all("usage_metadata" not in (r.json or {}) for r in sim.requests)


def test_usage_metadata_for_an_unmetered_client_is_dropped_with_a_warning(
    sim: OllamaSimulator, metered: FakeMeteringAPI, caplog: pytest.LogCaptureFixture
) -> None:
    metering.uninstall()
    try:
        client: Any = openai.OpenAI(base_url=f"{sim.url}/v1/", api_key="ollama")
    finally:
        metering.install()
    client.chat.completions.create(model=MODEL, messages=MESSAGES, usage_metadata={"agent": "a"})
    assert "usage_metadata" not in sim.requests[0].json
    assert records(metered) == []
    assert any("usage_metadata dropped" in r.getMessage() for r in caplog.records)


async def test_async_clients(sim: OllamaSimulator, metered: FakeMeteringAPI) -> None:
    sim.reply = SimulatedReply(tokens=["q", "r"], prompt_eval_count=5)
    clients: list[Any] = [
        httpx2.AsyncClient(transport=AsyncReveniumTransport()),
        httpx.AsyncClient(transport=AsyncReveniumTransport()),
    ]
    for http in clients:
        client = openai.AsyncOpenAI(base_url=f"{sim.url}/v1/", api_key="ollama", http_client=http)
        stream = await client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True)
        chunks = [chunk async for chunk in stream]
        assert all(chunk.choices for chunk in chunks)
        await client.embeddings.create(model="m", input="x")
        await client.close()
    found = sorted(
        (r["operationType"], r["inputTokenCount"], r["outputTokenCount"]) for r in records(metered)
    )
    assert found == [("CHAT", 5, 2), ("CHAT", 5, 2), ("EMBED", 5, 0), ("EMBED", 5, 0)]


def test_upstream_openai_example_with_only_its_import_changed(
    tmp_path: Path, sim: OllamaSimulator, api: FakeMeteringAPI
) -> None:
    script = tmp_path / "example.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import openai
            import revenium_ollama_transport

            openai.api_key = 'ollama'
            openai.base_url = '{sim.url}/v1/'
            question = "Why is the sky blue?"

            response = openai.chat.completions.create(
                model="gemma2:2b",
                messages=[
                   {{"role": "system", "content": "You are a helpful assistant."}},
                   {{"role": "user", "content": question}}
                ],
                usage_metadata={UPSTREAM_METADATA!r}
            )

            print(response)
            """
        )
    )
    done = run_python(
        script, {"REVENIUM_METERING_API_KEY": API_KEY, "REVENIUM_METERING_BASE_URL": api.url}
    )
    assert done.returncode == 0, done.stderr
    assert "ChatCompletion(" in done.stdout
    [record] = api.wait_for_records(1)
    assert record["organizationName"] == "acme-corp"
    assert record["operationType"] == "CHAT"
    assert json.loads(sim.requests[0].body)["model"] == "gemma2:2b"


async def test_convenience_constructors(
    sim: OllamaSimulator, metered: FakeMeteringAPI, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OLLAMA_HOST", sim.host)
    client = metering.openai_client(max_retries=0)
    assert str(client.base_url) == f"{sim.url}/v1/"
    client.chat.completions.create(model=MODEL, messages=MESSAGES, usage_metadata={"agent": "s"})
    async_client = metering.async_openai_client(base_url=f"{sim.url}/v1/")
    await async_client.embeddings.create(model="m", input="x", usage_metadata={"agent": "a"})
    await async_client.close()
    mine = metering.openai_client(base_url=f"{sim.url}/v1/", http_client=httpx.Client())
    mine.chat.completions.create(model=MODEL, messages=MESSAGES, usage_metadata={"agent": "h"})
    found = await asyncio.to_thread(records, metered)
    assert sorted(r["agent"] for r in found) == ["a", "h", "s"]


ROUTE_CALLS: dict[str, Any] = {
    "chat": lambda c, s: c.chat.completions.create(model=MODEL, messages=MESSAGES, stream=s),
    "completion": lambda c, s: c.completions.create(model=MODEL, prompt="x", stream=s),
    "response": lambda c, s: c.responses.create(model=MODEL, input="x", stream=s),
}
OPERATIONS = {"chat": "CHAT", "completion": "GENERATE", "response": "CHAT"}


@pytest.mark.parametrize("route", sorted(ROUTE_CALLS))
@pytest.mark.parametrize("stream", [False, True])
def test_every_route_streamed_or_not_on_both_families(
    sim: OllamaSimulator, metered: FakeMeteringAPI, family: str, route: str, stream: bool
) -> None:
    sim.reply = SimulatedReply(tokens=["p", "q", "r"], prompt_eval_count=13)
    result = ROUTE_CALLS[route](sdk(sim, family), stream)
    if stream:
        list(result)
    record = the_record(metered)
    assert record["operationType"] == OPERATIONS[route]
    assert (record["isStreamed"], record["stopReason"]) == (stream, "END")
    assert (record["inputTokenCount"], record["outputTokenCount"]) == (13, 3)
    assert record["totalTokenCount"] == 16
    assert record["model"] == MODEL
    assert record["retryNumber"] == 0


@pytest.mark.parametrize("route", sorted(ROUTE_CALLS))
async def test_every_route_streamed_async(
    sim: OllamaSimulator, metered: FakeMeteringAPI, route: str
) -> None:
    sim.reply = SimulatedReply(tokens=["p", "q"], prompt_eval_count=6)
    client: Any = openai.AsyncOpenAI(
        base_url=f"{sim.url}/v1/",
        api_key="ollama",
        http_client=httpx2.AsyncClient(transport=AsyncReveniumTransport()),
    )
    stream = await ROUTE_CALLS[route](client, True)
    assert [event async for event in stream]
    await client.close()
    [record] = await asyncio.to_thread(records, metered)
    assert (record["operationType"], record["isStreamed"]) == (OPERATIONS[route], True)
    assert (record["inputTokenCount"], record["outputTokenCount"]) == (6, 2)


def test_blocks_and_the_header_work_for_the_sdk_too(
    sim: OllamaSimulator, metered: FakeMeteringAPI
) -> None:
    client = sdk(sim, "httpx2")
    with metering.usage_metadata(trace_id="block"):
        client.chat.completions.create(
            model=MODEL,
            messages=MESSAGES,
            extra_headers={"X-Revenium-Metadata": '{"agent": "from-header"}'},
        )
    record = the_record(metered)
    assert (record["traceId"], record["agent"]) == ("block", "from-header")
    assert "x-revenium-metadata" not in sim.requests[0].headers


def test_everything_else_works_without_httpx2(
    tmp_path: Path, sim: OllamaSimulator, api: FakeMeteringAPI
) -> None:
    script = tmp_path / "no_httpx2.py"
    script.write_text(
        textwrap.dedent(
            """
            import sys
            sys.modules["httpx2"] = None  # as if it were not installed
            import ollama
            import revenium_ollama_transport as metering
            print(ollama.chat(model="m", messages=[])._revenium_transaction_id)
            metering.flush()
            """
        )
    )
    done = run_python(
        script,
        {
            "OLLAMA_HOST": sim.host,
            "REVENIUM_METERING_API_KEY": API_KEY,
            "REVENIUM_METERING_BASE_URL": api.url,
        },
    )
    assert done.returncode == 0, done.stderr
    [record] = api.wait_for_records(1)
    assert record["transactionId"] == done.stdout.strip()


def test_sdk_responses_carry_their_transaction_id(
    sim: OllamaSimulator, metered: FakeMeteringAPI
) -> None:
    sim.queue(SimulatedReply(status=503, error="busy"))
    client = sdk(sim, "httpx2", max_retries=1)
    response = client.chat.completions.create(model=MODEL, messages=MESSAGES)
    stream = client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True)
    list(stream)
    by_id = {r["transactionId"]: r for r in records(metered)}
    assert by_id[response._revenium_transaction_id]["retryNumber"] == 1  # the last attempt
    assert by_id[stream._revenium_transaction_id]["isStreamed"] is True
    assert "_revenium_transaction_id" not in response.model_dump()
    assert "_revenium_transaction_id" not in response.model_dump_json()


async def test_async_sdk_responses_carry_their_transaction_id(
    sim: OllamaSimulator, metered: FakeMeteringAPI
) -> None:
    client: Any = openai.AsyncOpenAI(
        base_url=f"{sim.url}/v1/",
        api_key="ollama",
        http_client=httpx2.AsyncClient(transport=AsyncReveniumTransport()),
    )
    response = await client.embeddings.create(model="m", input="x")
    await client.close()
    [record] = await asyncio.to_thread(records, metered)
    assert response._revenium_transaction_id == record["transactionId"]
