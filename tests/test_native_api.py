"""The real ``ollama`` client, sync and async, over loopback to the simulator, with records
delivered to the fake metering API and checked field by field."""

from __future__ import annotations

import asyncio
import gc
import re
import uuid
import weakref
from datetime import datetime
from typing import Any

import httpx
import ollama
import pytest

import revenium_ollama_transport as metering
from revenium_ollama_transport import AsyncReveniumTransport, ReveniumTransport, usage_metadata
from revenium_ollama_transport.testing import FakeMeteringAPI, OllamaSimulator, SimulatedReply

from ._sinks import RecordingSink
from .conftest import API_KEY

ISO_MS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
MESSAGES = [{"role": "user", "content": "Why is the sky blue?"}]
MODEL = "qwen2.5:0.5b"
FIXED_TIME = "2024-07-22T20:16:05.213393Z"


def client(sim: OllamaSimulator, **kwargs: Any) -> ollama.Client:
    return ollama.Client(host=sim.url, transport=ReveniumTransport(), **kwargs)


def async_client(sim: OllamaSimulator) -> ollama.AsyncClient:
    return ollama.AsyncClient(host=sim.url, transport=AsyncReveniumTransport())


def chat(c: ollama.Client, stream: bool, model: str = MODEL) -> None:
    """One chat call, read to its end."""
    if stream:
        list(c.chat(model=model, messages=MESSAGES, stream=True))
    else:
        c.chat(model=model, messages=MESSAGES)


def when(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def the_record(api: FakeMeteringAPI) -> dict[str, Any]:
    """Flushes, then returns the one record the call produced (and checks it was one)."""
    assert metering.flush(10.0)
    records = api.records
    assert len(records) == 1, records
    return records[0]


def check_common(record: dict[str, Any], api: FakeMeteringAPI) -> None:
    assert uuid.UUID(record["transactionId"]).version == 4
    assert record["provider"] == "OLLAMA"
    assert record["modelSource"] == "OLLAMA"
    assert record["middlewareSource"] == "PYTHON"
    assert record["costType"] == "AI"
    assert None not in record.values()
    for name in ("requestTime", "responseTime", "completionStartTime"):
        assert ISO_MS.match(record[name]), (name, record[name])
    start, first, end = (
        when(record[n]) for n in ("requestTime", "completionStartTime", "responseTime")
    )
    assert start <= first <= end
    assert isinstance(record["requestDuration"], int)
    assert record["requestDuration"] >= 0
    assert record["totalTokenCount"] == record["inputTokenCount"] + record["outputTokenCount"]
    [sent] = [
        r for r in api.received if r.record and r.record["transactionId"] == record["transactionId"]
    ]
    assert sent.headers["x-api-key"] == API_KEY
    assert sent.headers["idempotency-key"] == record["transactionId"]


# --- completed calls ------------------------------------------------------------------


def test_chat_not_streamed(sim: OllamaSimulator, metered: FakeMeteringAPI) -> None:
    sim.reply = SimulatedReply(
        tokens=["Rayleigh", " scattering"], prompt_eval_count=31, eval_count=2
    )
    response = client(sim).chat(model=MODEL, messages=MESSAGES, options={"temperature": 0.2})
    assert response.message.content == "Rayleigh scattering"
    record = the_record(metered)
    check_common(record, metered)
    assert record["model"] == MODEL
    assert record["operationType"] == "CHAT"
    assert record["isStreamed"] is False
    assert record["stopReason"] == "END"
    assert (record["inputTokenCount"], record["outputTokenCount"]) == (31, 2)
    assert record["temperature"] == 0.2
    assert "errorCode" not in record
    assert "errorReason" not in record


def test_chat_streamed(sim: OllamaSimulator, metered: FakeMeteringAPI) -> None:
    sim.reply = SimulatedReply(
        tokens=["a", "b", "c", "d"], prompt_eval_count=9, first_byte_delay=0.05
    )
    parts = list(client(sim).chat(model=MODEL, messages=MESSAGES, stream=True))
    assert "".join(p.message.content or "" for p in parts) == "abcd"
    record = the_record(metered)
    check_common(record, metered)
    assert record["isStreamed"] is True
    assert record["stopReason"] == "END"
    assert (record["inputTokenCount"], record["outputTokenCount"]) == (9, 4)
    assert 40 <= record["timeToFirstToken"] <= record["requestDuration"]


def test_model_comes_from_the_response(sim: OllamaSimulator, metered: FakeMeteringAPI) -> None:
    sim.reply = SimulatedReply(model="qwen2.5:0.5b-instruct-q4_K_M")
    client(sim).chat(model="qwen2.5:0.5b", messages=MESSAGES)
    assert the_record(metered)["model"] == "qwen2.5:0.5b-instruct-q4_K_M"


@pytest.mark.parametrize("stream", [False, True])
def test_generate(sim: OllamaSimulator, metered: FakeMeteringAPI, stream: bool) -> None:
    sim.reply = SimulatedReply(tokens=["x", "y"], prompt_eval_count=4)
    c = client(sim)
    if stream:
        parts = c.generate(model=MODEL, prompt="hi", stream=True)
        assert "".join(p.response or "" for p in parts) == "xy"
    else:
        assert c.generate(model=MODEL, prompt="hi").response == "xy"
    record = the_record(metered)
    check_common(record, metered)
    assert record["operationType"] == "GENERATE"
    assert record["isStreamed"] is stream
    assert (record["inputTokenCount"], record["outputTokenCount"]) == (4, 2)


def test_embed(sim: OllamaSimulator, metered: FakeMeteringAPI) -> None:
    sim.reply = SimulatedReply(prompt_eval_count=11, embedding_dims=16)
    response = client(sim).embed(model="all-minilm", input=["one", "two"])
    assert len(response.embeddings) == 2
    record = the_record(metered)
    check_common(record, metered)
    assert record["operationType"] == "EMBED"
    assert record["isStreamed"] is False
    assert (record["inputTokenCount"], record["outputTokenCount"]) == (11, 0)
    assert record["model"] == "all-minilm"


def test_legacy_embeddings_reports_no_tokens(
    sim: OllamaSimulator, metered: FakeMeteringAPI
) -> None:
    response = client(sim).embeddings(model="all-minilm", prompt="one")
    assert len(response.embedding) > 0
    record = the_record(metered)
    check_common(record, metered)
    assert record["operationType"] == "EMBED"
    assert record["model"] == "all-minilm"
    assert (record["inputTokenCount"], record["outputTokenCount"]) == (0, 0)
    assert record["stopReason"] == "END"


@pytest.mark.parametrize("where", ["intermediate", "final"])
@pytest.mark.parametrize("stream", [False, True])
def test_tool_calls(
    sim: OllamaSimulator, metered: FakeMeteringAPI, where: str, stream: bool
) -> None:
    call = {"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}
    sim.reply = SimulatedReply(tokens=[], tool_calls=[call], tool_calls_on=where, eval_count=12)  # type: ignore[arg-type]
    chat(client(sim), stream)
    record = the_record(metered)
    assert record["operationType"] == "TOOL_CALL"
    assert record["outputTokenCount"] == 12


@pytest.mark.parametrize(
    ("done_reason", "stop"),
    [("length", "TOKEN_LIMIT"), ("stop", "END"), ("load", "END"), ("unload", "END"), (None, "END")],
)
def test_done_reason_mapping(
    sim: OllamaSimulator, metered: FakeMeteringAPI, done_reason: str | None, stop: str
) -> None:
    sim.reply = SimulatedReply(done_reason=done_reason)
    list(client(sim).chat(model=MODEL, messages=MESSAGES, stream=True))
    assert the_record(metered)["stopReason"] == stop


def test_gzip_encoded_stream_is_metered(sim: OllamaSimulator, metered: FakeMeteringAPI) -> None:
    sim.reply = SimulatedReply(tokens=["a", "b", "c"], prompt_eval_count=5, gzip=True)
    parts = list(client(sim).chat(model=MODEL, messages=MESSAGES, stream=True))
    assert "".join(p.message.content or "" for p in parts) == "abc"
    record = the_record(metered)
    assert (record["inputTokenCount"], record["outputTokenCount"], record["stopReason"]) == (
        5,
        3,
        "END",
    )


def test_gzip_encoded_body_is_metered(sim: OllamaSimulator, metered: FakeMeteringAPI) -> None:
    sim.reply = SimulatedReply(tokens=["a", "b"], prompt_eval_count=6, gzip=True)
    assert client(sim).chat(model=MODEL, messages=MESSAGES).message.content == "ab"
    record = the_record(metered)
    assert (record["inputTokenCount"], record["outputTokenCount"]) == (6, 2)


# --- calls that end otherwise ------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True])
def test_http_error_status(sim: OllamaSimulator, metered: FakeMeteringAPI, stream: bool) -> None:
    sim.reply = SimulatedReply(status=404, error='model "nope" not found, try pulling it first')
    with pytest.raises(ollama.ResponseError) as raised:
        chat(client(sim), stream, model="nope")
    assert raised.value.status_code == 404
    record = the_record(metered)
    check_common(record, metered)
    assert record["stopReason"] == "ERROR"
    assert record["errorCode"] == 404
    assert record["errorReason"] == 'model "nope" not found, try pulling it first'
    assert record["isStreamed"] is stream
    assert record["model"] == "nope"
    assert (record["inputTokenCount"], record["outputTokenCount"]) == (0, 0)


def test_error_line_mid_stream(sim: OllamaSimulator, metered: FakeMeteringAPI) -> None:
    sim.reply = SimulatedReply(
        tokens=["a", "b", "c", "d"], error_after=2, error="llama runner crashed"
    )
    seen = []
    with pytest.raises(ollama.ResponseError) as raised:
        for part in client(sim).chat(model=MODEL, messages=MESSAGES, stream=True):
            seen.append(part.message.content)
    assert raised.value.error == "llama runner crashed"
    assert seen == ["a", "b"]
    record = the_record(metered)
    check_common(record, metered)
    assert record["stopReason"] == "ERROR"
    assert record["errorReason"] == "llama runner crashed"
    assert record["outputTokenCount"] == 2


def test_early_break_is_cancelled(sim: OllamaSimulator, metered: FakeMeteringAPI) -> None:
    sim.reply = SimulatedReply(tokens=[f"t{i}" for i in range(50)], chunk_delay=0.01)
    for part in client(sim).chat(model=MODEL, messages=MESSAGES, stream=True):
        assert part.message.content == "t0"
        break
    record = the_record(metered)
    check_common(record, metered)
    assert record["stopReason"] == "CANCELLED"
    assert 1 <= record["outputTokenCount"] < 50
    assert record["inputTokenCount"] == 0


def test_closing_the_generator_is_cancelled(sim: OllamaSimulator, metered: FakeMeteringAPI) -> None:
    sim.reply = SimulatedReply(tokens=[f"t{i}" for i in range(50)], chunk_delay=0.01)
    stream = client(sim).chat(model=MODEL, messages=MESSAGES, stream=True)
    next(stream)
    next(stream)
    stream.close()  # type: ignore[attr-defined]
    record = the_record(metered)
    assert record["stopReason"] == "CANCELLED"
    assert 2 <= record["outputTokenCount"] < 50


def test_dropped_iterator_is_cancelled_at_once(
    sim: OllamaSimulator, metered: FakeMeteringAPI
) -> None:
    sim.reply = SimulatedReply(tokens=[f"t{i}" for i in range(50)], chunk_delay=0.01)
    stream = client(sim).chat(model=MODEL, messages=MESSAGES, stream=True)
    next(stream)
    del stream
    assert metered.wait_for_records(1, timeout=5.0)[0]["stopReason"] == "CANCELLED"


def test_raw_httpx_close_before_reading_is_cancelled(
    sim: OllamaSimulator, metered: FakeMeteringAPI
) -> None:
    sim.reply = SimulatedReply(tokens=["a"] * 20, chunk_delay=0.01)
    with httpx.Client(transport=ReveniumTransport(), base_url=sim.url) as http:
        with http.stream("POST", "/api/chat", json={"model": MODEL, "messages": MESSAGES}) as r:
            assert r.status_code == 200
    record = the_record(metered)
    assert record["stopReason"] == "CANCELLED"
    assert record["outputTokenCount"] == 0


def test_connection_lost_mid_stream(sim: OllamaSimulator, metered: FakeMeteringAPI) -> None:
    sim.reply = SimulatedReply(tokens=["a", "b", "c", "d", "e"], drop_after=3)
    with pytest.raises(httpx.HTTPError):
        list(client(sim).chat(model=MODEL, messages=MESSAGES, stream=True))
    record = the_record(metered)
    check_common(record, metered)
    assert record["stopReason"] == "ERROR"
    assert "Error" in record["errorReason"]
    assert record["outputTokenCount"] == 3


def test_read_timeout_is_recorded_as_timeout(
    sim: OllamaSimulator, metered: FakeMeteringAPI
) -> None:
    sim.reply = SimulatedReply(first_byte_delay=2.0)
    with pytest.raises(httpx.ReadTimeout):
        client(sim, timeout=0.2).chat(model=MODEL, messages=MESSAGES)
    record = the_record(metered)
    assert record["stopReason"] == "TIMEOUT"
    assert record["errorReason"].startswith("ReadTimeout")


def test_connection_refused_passes_through(metered: FakeMeteringAPI) -> None:
    with OllamaSimulator() as gone:
        url = gone.url
    with pytest.raises(ConnectionError):  # ollama maps httpx.ConnectError to ConnectionError
        ollama.Client(host=url, transport=ReveniumTransport()).chat(model=MODEL, messages=MESSAGES)
    with pytest.raises(httpx.ConnectError):
        httpx.Client(transport=ReveniumTransport()).post(f"{url}/api/chat", json={})
    assert metering.flush(10.0)
    assert [r["stopReason"] for r in metered.records] == ["ERROR", "ERROR"]
    assert all(r["errorReason"].startswith("ConnectError") for r in metered.records)


# --- async --------------------------------------------------------------------------------


async def test_async_chat_not_streamed_and_streamed(
    sim: OllamaSimulator, metered: FakeMeteringAPI
) -> None:
    sim.reply = SimulatedReply(tokens=["x", "y", "z"], prompt_eval_count=7)
    c = async_client(sim)
    response = await c.chat(model=MODEL, messages=MESSAGES)
    assert response.message.content == "xyz"
    parts = [p async for p in await c.chat(model=MODEL, messages=MESSAGES, stream=True)]
    assert len(parts) == 4
    assert metering.flush(10.0)
    records = sorted(metered.records, key=lambda r: r["isStreamed"])
    assert [r["isStreamed"] for r in records] == [False, True]
    for record in records:
        check_common(record, metered)
        assert (record["inputTokenCount"], record["outputTokenCount"], record["stopReason"]) == (
            7,
            3,
            "END",
        )


async def test_async_early_break_is_cancelled(
    sim: OllamaSimulator, metered: FakeMeteringAPI
) -> None:
    sim.reply = SimulatedReply(tokens=[f"t{i}" for i in range(50)], chunk_delay=0.01)
    async for _part in await async_client(sim).chat(model=MODEL, messages=MESSAGES, stream=True):
        break
    # The abandoned async generator is closed by the event loop on its next turns: wait
    # in a thread so that the loop keeps running.
    [record] = await asyncio.to_thread(metered.wait_for_records, 1, 5.0)
    assert record["stopReason"] == "CANCELLED"
    assert 1 <= record["outputTokenCount"] < 50


async def test_async_aclose_is_cancelled(sim: OllamaSimulator, metered: FakeMeteringAPI) -> None:
    sim.reply = SimulatedReply(tokens=[f"t{i}" for i in range(50)], chunk_delay=0.01)
    stream = await async_client(sim).chat(model=MODEL, messages=MESSAGES, stream=True)
    await stream.__anext__()
    await stream.aclose()  # type: ignore[attr-defined]
    assert metering.flush(10.0)
    [record] = metered.records
    assert record["stopReason"] == "CANCELLED"


async def test_async_error_line_and_status(sim: OllamaSimulator, metered: FakeMeteringAPI) -> None:
    sim.queue(
        SimulatedReply(tokens=["a", "b", "c"], error_after=1, error="boom"),
        SimulatedReply(status=500, error="busy"),
    )
    c = async_client(sim)
    with pytest.raises(ollama.ResponseError):
        async for _ in await c.chat(model=MODEL, messages=MESSAGES, stream=True):
            pass
    with pytest.raises(ollama.ResponseError):
        await c.generate(model=MODEL, prompt="x")
    assert metering.flush(10.0)
    reasons = sorted((r["errorReason"], r.get("errorCode")) for r in metered.records)
    assert reasons == [("boom", None), ("busy", 500)]


async def test_async_connection_lost(sim: OllamaSimulator, metered: FakeMeteringAPI) -> None:
    sim.reply = SimulatedReply(tokens=["a", "b", "c", "d"], drop_after=2)
    with pytest.raises(httpx.HTTPError):
        async for _ in await async_client(sim).chat(model=MODEL, messages=MESSAGES, stream=True):
            pass
    record = the_record(metered)
    assert record["stopReason"] == "ERROR"


# --- pass-through and transparency ------------------------------------------------------------


def test_other_routes_pass_through_unmetered(
    sim: OllamaSimulator, metered: FakeMeteringAPI
) -> None:
    c = client(sim)
    assert c.list() is not None
    assert c.ps() is not None
    assert c.show(MODEL) is not None
    assert list(c.pull(MODEL, stream=True))
    c.copy(MODEL, "copy-of-it")
    c.delete("copy-of-it")
    assert metering.flush(10.0)
    assert metered.records == []
    assert metering.stats().get("recorded", 0) == 0
    assert {r.path for r in sim.requests} >= {"/api/tags", "/api/ps", "/api/show", "/api/pull"}


def exchange(
    transport: httpx.BaseTransport, url: str, body: dict[str, Any]
) -> tuple[int, dict[str, str], list[bytes]]:
    with httpx.Client(transport=transport) as http:
        with http.stream("POST", url, json=body) as response:
            chunks = list(response.iter_raw())
            headers = {k: v for k, v in response.headers.items() if k != "date"}
            return response.status_code, headers, chunks


@pytest.mark.parametrize(
    "reply",
    [
        SimulatedReply(created_at=FIXED_TIME),
        SimulatedReply(created_at=FIXED_TIME, gzip=True),
        SimulatedReply(created_at=FIXED_TIME, status=404, error="not found"),
        SimulatedReply(created_at=FIXED_TIME, error_after=2, error="x"),
    ],
)
@pytest.mark.parametrize("stream", [False, True])
def test_caller_gets_exactly_what_it_would_without_us(
    sim: OllamaSimulator, metered: FakeMeteringAPI, reply: SimulatedReply, stream: bool
) -> None:
    sim.reply = reply
    body = {"model": MODEL, "messages": MESSAGES, "stream": stream}
    plain = exchange(httpx.HTTPTransport(), f"{sim.url}/api/chat", body)
    metered_ = exchange(ReveniumTransport(), f"{sim.url}/api/chat", body)
    assert metered_ == plain


def test_metadata_header_is_used_and_never_reaches_ollama(
    sim: OllamaSimulator, metered: FakeMeteringAPI
) -> None:
    c = client(sim, headers={"X-Revenium-Metadata": '{"trace_id": "hdr-1", "agent": "bot"}'})
    c.chat(model=MODEL, messages=MESSAGES)
    c.list()
    record = the_record(metered)
    assert (record["traceId"], record["agent"]) == ("hdr-1", "bot")
    assert all("x-revenium-metadata" not in r.headers for r in sim.requests)


def test_usage_metadata_block_reaches_the_record(
    sim: OllamaSimulator, metered: FakeMeteringAPI
) -> None:
    with usage_metadata(
        {
            "trace_id": "conv-1",
            "organization_id": "acme",
            "subscriber": {"id": "u-1", "credential": {"name": "k", "value": "sk-1"}},
        }
    ):
        client(sim).chat(model=MODEL, messages=MESSAGES)
    client(sim).chat(model=MODEL, messages=MESSAGES)
    assert metering.flush(10.0)
    with_meta, without = sorted(metered.records, key=lambda r: "traceId" not in r)
    assert with_meta["traceId"] == "conv-1"
    assert with_meta["organizationName"] == "acme"
    assert with_meta["subscriber"] == {"id": "u-1", "credential": {"name": "k", "value": "sk-1"}}
    assert "traceId" not in without
    assert "subscriber" not in without


def test_mounts_and_transport_options(sim: OllamaSimulator, metered: FakeMeteringAPI) -> None:
    transport = ReveniumTransport(retries=1, limits=httpx.Limits(max_connections=2))
    with httpx.Client(mounts={"http://": transport}) as http:
        assert (
            http.post(f"{sim.url}/api/chat", json={"model": MODEL, "stream": False}).status_code
            == 200
        )
    assert the_record(metered)["stopReason"] == "END"
    with pytest.raises(TypeError):
        ReveniumTransport(httpx.HTTPTransport(), retries=1)


def test_response_dropped_without_close_still_gets_its_record(
    sim: OllamaSimulator, metered: FakeMeteringAPI
) -> None:
    sim.reply = SimulatedReply(tokens=["a"] * 5)
    http = httpx.Client(transport=ReveniumTransport(), base_url=sim.url)
    request = http.build_request("POST", "/api/chat", json={"model": MODEL, "messages": MESSAGES})
    response = http.send(request, stream=True)
    assert response.status_code == 200
    del response
    gc.collect()
    record = the_record(metered)
    assert record["stopReason"] == "CANCELLED"
    http.close()


@pytest.mark.parametrize("stream", [False, True])
async def test_async_generate_and_embed_routes(
    sim: OllamaSimulator, metered: FakeMeteringAPI, stream: bool
) -> None:
    sim.reply = SimulatedReply(tokens=["x", "y"], prompt_eval_count=5)
    c = async_client(sim)
    if stream:
        parts = [p async for p in await c.generate(model=MODEL, prompt="hi", stream=True)]
        assert "".join(p.response or "" for p in parts) == "xy"
    else:
        assert (await c.generate(model=MODEL, prompt="hi")).response == "xy"
    await c.embed(model="all-minilm", input="one")
    await c.embeddings(model="all-minilm", prompt="one")
    assert metering.flush(10.0)
    by_route = sorted(
        (r["operationType"], r["inputTokenCount"], r["outputTokenCount"], r["isStreamed"])
        for r in metered.records
    )
    assert by_route == [("EMBED", 0, 0, False), ("EMBED", 5, 0, False), ("GENERATE", 5, 2, stream)]


class _WatchedStreams(httpx.HTTPTransport):
    """The real network transport, with weak references to the body streams it returns."""

    def __init__(self) -> None:
        super().__init__()
        self.streams: list[weakref.ref[Any]] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = super().handle_request(request)
        self.streams.append(weakref.ref(response.stream))
        return response


class _AsyncWatchedStreams(httpx.AsyncHTTPTransport):
    def __init__(self) -> None:
        super().__init__()
        self.streams: list[weakref.ref[Any]] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await super().handle_async_request(request)
        self.streams.append(weakref.ref(response.stream))
        return response


@pytest.mark.parametrize("stream", [False, True])
def test_a_waiting_record_does_not_keep_the_network_stream(
    sim: OllamaSimulator, stream: bool
) -> None:
    # Until the delivery thread takes it, the record's observation waits (a sink keeping it
    # stands for that); the network stream it was read from, with the connection pool's
    # request objects, must not wait with it: objects kept that long end up in the garbage
    # collector's oldest generation, whose full collections every thread then pays for.
    sink = RecordingSink()
    inner = _WatchedStreams()
    c = ollama.Client(host=sim.url, transport=ReveniumTransport(inner, sink=sink))
    if stream:
        assert [p.message.content for p in c.chat(model=MODEL, messages=MESSAGES, stream=True)]
    else:
        assert c.chat(model=MODEL, messages=MESSAGES).message.content
    sink.wait_for(1)
    gc.collect()
    assert len(inner.streams) == 1
    assert inner.streams[0]() is None, "the waiting observation keeps the network stream"
    assert sink.records()[0].wire["inputTokenCount"] > 0  # and the record is whole
    c._client.close()


async def test_a_waiting_async_record_does_not_keep_the_network_stream(
    sim: OllamaSimulator,
) -> None:
    sink = RecordingSink()
    inner = _AsyncWatchedStreams()
    c = ollama.AsyncClient(host=sim.url, transport=AsyncReveniumTransport(inner, sink=sink))
    assert (await c.chat(model=MODEL, messages=MESSAGES)).message.content
    sink.wait_for(1)
    gc.collect()
    assert len(inner.streams) == 1
    assert inner.streams[0]() is None, "the waiting observation keeps the network stream"
    assert sink.records()[0].wire["inputTokenCount"] > 0
    await c._client.aclose()
