"""Metering on import: the upstream quick start with only its import changed, in fresh
interpreters; ``usage_metadata=`` on every call; instrument, uninstall, the kill switch;
and the ollama client's behaviour otherwise unchanged."""

from __future__ import annotations

import asyncio
import sys
import textwrap
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import ollama
import pytest

import revenium_ollama_transport as metering
from revenium_ollama_transport import MetadataError, instrument, usage_metadata
from revenium_ollama_transport._install import _instrumented
from revenium_ollama_transport._transport import AsyncReveniumTransport, ReveniumTransport
from revenium_ollama_transport.testing import FakeMeteringAPI, OllamaSimulator, SimulatedReply

from ._processes import run_python
from ._upstream import UPSTREAM_METADATA
from .conftest import API_KEY

MODEL = "qwen2.5:0.5b"
MESSAGES = [{"role": "user", "content": "Why is the sky blue?"}]
UPSTREAM_WIRE = {
    "traceId": "conv-28a7e9d4",
    "taskType": "summarize-customer-issue",
    "subscriber": UPSTREAM_METADATA["subscriber"],
    "organizationName": "acme-corp",
    "subscriptionId": "startup-plan-Q1",
    "productName": "saas-app-gold-tier",
    "agent": "support-agent",
}


def client_for(sim: OllamaSimulator, **kwargs: Any) -> Any:
    """A client typed as Any: type checkers do not know the ``usage_metadata=`` keyword."""
    return ollama.Client(host=sim.url, **kwargs)


def async_client_for(sim: OllamaSimulator) -> Any:
    return ollama.AsyncClient(host=sim.url)


def run_script(
    tmp_path: Path, source: str, sim: OllamaSimulator, api: FakeMeteringAPI, **env: str
) -> list[str]:
    """Runs ``source`` in a fresh interpreter pointed at ``sim`` and ``api``; its stdout lines."""
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(source))
    done = run_python(
        script,
        {
            "OLLAMA_HOST": sim.host,
            "REVENIUM_METERING_API_KEY": API_KEY,
            "REVENIUM_METERING_BASE_URL": api.url,
            **env,
        },
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


def test_upstream_quick_start_with_only_the_import_changed(
    tmp_path: Path, sim: OllamaSimulator, api: FakeMeteringAPI
) -> None:
    sim.reply = SimulatedReply(tokens=["Rayleigh", " scattering."], prompt_eval_count=14)
    (tmp_path / ".env").write_text("REVENIUM_LOG_LEVEL=WARNING\n")
    out = run_script(
        tmp_path,
        f"""
        from dotenv import load_dotenv
        load_dotenv()

        import ollama
        import revenium_ollama_transport

        response = ollama.chat(
            model="{MODEL}",
            messages=[{{"role": "user", "content": "Why is the sky blue?"}}],
            usage_metadata={UPSTREAM_METADATA!r},
        )
        print(response["message"]["content"])
        print(response._revenium_transaction_id)
        """,
        sim,
        api,
    )
    assert out[0] == "Rayleigh scattering."
    [record] = api.wait_for_records(1)
    assert record["transactionId"] == out[1]
    assert {k: record[k] for k in UPSTREAM_WIRE} == UPSTREAM_WIRE
    assert (record["inputTokenCount"], record["outputTokenCount"]) == (14, 2)
    assert "usage_metadata" not in (sim.requests[0].json or {})


@pytest.mark.parametrize("first", ["ollama", "revenium_ollama_transport"])
def test_every_entry_point_is_metered_whichever_package_comes_first(
    tmp_path: Path, sim: OllamaSimulator, api: FakeMeteringAPI, first: str
) -> None:
    second = "revenium_ollama_transport" if first == "ollama" else "ollama"
    out = run_script(
        tmp_path,
        f"""
        import {first}
        import {second}
        import asyncio
        import ollama

        m = dict(model="{MODEL}", messages=[{{"role": "user", "content": "hi"}}])
        ids = [ollama.chat(**m, usage_metadata={{"trace_id": "module"}})._revenium_transaction_id]
        parts = list(ollama.chat(**m, stream=True, usage_metadata={{"trace_id": "stream"}}))
        assert len({{p._revenium_transaction_id for p in parts}}) == 1
        ids.append(parts[0]._revenium_transaction_id)
        ids.append(ollama.Client().generate(model="{MODEL}", prompt="x",
                   usage_metadata={{"trace_id": "client"}})._revenium_transaction_id)

        async def main():
            client = ollama.AsyncClient()
            response = await client.embed(model="{MODEL}", input="x",
                                          usage_metadata={{"trace_id": "async"}})
            ids.append(response._revenium_transaction_id)
            stream = await client.chat(**m, stream=True, usage_metadata={{"trace_id": "astream"}})
            ids.append([p async for p in stream][-1]._revenium_transaction_id)

        asyncio.run(main())
        print(" ".join(ids))
        """,
        sim,
        api,
    )
    ids = out[0].split()
    records = api.wait_for_records(5)
    by_trace = {r["traceId"]: r for r in records}
    assert [
        by_trace[t]["transactionId"] for t in ("module", "stream", "client", "async", "astream")
    ] == ids
    assert by_trace["stream"]["isStreamed"] is True
    assert by_trace["client"]["operationType"] == "GENERATE"
    assert by_trace["async"]["operationType"] == "EMBED"


def test_a_client_made_before_the_import_is_metered_once_instrumented(
    tmp_path: Path, sim: OllamaSimulator, api: FakeMeteringAPI
) -> None:
    out = run_script(
        tmp_path,
        f"""
        import ollama
        early = ollama.Client()
        import revenium_ollama_transport
        early.chat(model="{MODEL}", messages=[])
        revenium_ollama_transport.flush()
        print(revenium_ollama_transport.stats().get("recorded", 0))
        revenium_ollama_transport.instrument(early)
        early.chat(model="{MODEL}", messages=[])
        """,
        sim,
        api,
    )
    assert out == ["0"]
    assert len(api.wait_for_records(1)) == 1


def test_kill_switch_installs_and_meters_nothing(
    tmp_path: Path, sim: OllamaSimulator, api: FakeMeteringAPI
) -> None:
    out = run_script(
        tmp_path,
        f"""
        import ollama, httpx
        import revenium_ollama_transport as m
        original = ollama.Client.chat
        ollama.chat(model="{MODEL}", messages=[])
        ollama.Client(transport=m.ReveniumTransport()).chat(model="{MODEL}", messages=[])
        m.flush()
        print(m.stats().get("recorded", 0), m.install(), ollama.Client.chat is original)
        """,
        sim,
        api,
        REVENIUM_METERING_ENABLED="false",
    )
    assert out == ["0 False True"]
    assert api.received == []


# --- in this process (the package is imported, so installed) ------------------------------


def test_usage_metadata_on_each_call_and_transaction_ids(
    sim: OllamaSimulator, metered: FakeMeteringAPI
) -> None:
    client = client_for(sim)
    response = client.chat(model=MODEL, messages=MESSAGES, usage_metadata={"agent": "a1"})
    parts = list(
        client.generate(model=MODEL, prompt="x", stream=True, usage_metadata={"agent": "a2"})
    )
    embedded = client.embeddings(model=MODEL, prompt="x", usage_metadata={"agent": "a3"})
    assert metering.flush(10.0)
    by_agent = {r["agent"]: r["transactionId"] for r in metered.records}
    assert response._revenium_transaction_id == by_agent["a1"]
    assert {p._revenium_transaction_id for p in parts} == {by_agent["a2"]}
    assert embedded._revenium_transaction_id == by_agent["a3"]
    assert "_revenium_transaction_id" not in response.model_dump()
    assert "_revenium_transaction_id" not in response.model_dump_json()


def test_call_metadata_applies_to_that_call_only_and_wins(
    sim: OllamaSimulator, metered: FakeMeteringAPI, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REVENIUM_ENVIRONMENT", "from-env")
    monkeypatch.setenv("REVENIUM_TRACE_NAME", "env-name")
    client = client_for(
        sim, headers={"X-Revenium-Metadata": '{"agent": "header", "trace_name": "hdr"}'}
    )
    with usage_metadata(agent="block", trace_id="block-trace", environment="block-env"):
        client.chat(model=MODEL, messages=MESSAGES, usage_metadata={"agent": "call"})
        client.chat(model=MODEL, messages=MESSAGES)
    assert metering.flush(10.0)
    first, second = sorted(metered.records, key=lambda r: r["agent"] != "call")
    assert (first["agent"], first["traceId"], first["environment"], first["traceName"]) == (
        "call",
        "block-trace",
        "block-env",
        "hdr",
    )
    assert (second["agent"], second["traceId"], second["environment"]) == (
        "header",
        "block-trace",
        "block-env",
    )


def test_streamed_call_metadata_applies_although_the_request_leaves_later(
    sim: OllamaSimulator, metered: FakeMeteringAPI
) -> None:
    client = client_for(sim)
    stream = client.chat(
        model=MODEL, messages=MESSAGES, stream=True, usage_metadata={"trace_id": "lazy"}
    )
    assert sim.requests == []  # nothing sent yet
    with usage_metadata(trace_id="outer-when-iterated"):
        list(stream)
    assert metering.flush(10.0)
    assert [r["traceId"] for r in metered.records] == ["lazy"]


def test_breaking_out_of_a_tagged_stream_still_cancels(
    sim: OllamaSimulator, metered: FakeMeteringAPI
) -> None:
    sim.reply = SimulatedReply(tokens=[f"t{i}" for i in range(40)], chunk_delay=0.01)
    for _ in client_for(sim).chat(
        model=MODEL, messages=MESSAGES, stream=True, usage_metadata={"agent": "x"}
    ):
        break
    [record] = metered.wait_for_records(1, timeout=5.0)
    assert record["stopReason"] == "CANCELLED"


@pytest.mark.parametrize(
    "bad",
    [
        {"trace_id": 5},
        {"response_quality_score": 2},
        {"colour": "x"},
        ["trace_id"],
        {"trace_type": "a b"},
    ],
)
def test_strict_mode_raises_before_anything_is_sent(
    sim: OllamaSimulator, metered: FakeMeteringAPI, monkeypatch: pytest.MonkeyPatch, bad: Any
) -> None:
    monkeypatch.setenv("REVENIUM_STRICT_METADATA", "true")
    client = client_for(sim)
    with pytest.raises(ValueError, match="usage_metadata"):
        client.chat(model=MODEL, messages=MESSAGES, usage_metadata=bad)
    with pytest.raises(MetadataError):
        with usage_metadata(bad if isinstance(bad, dict) else {"x": 1}):
            pass
    assert sim.requests == []


def test_strict_mode_checks_the_header_too(
    sim: OllamaSimulator, metered: FakeMeteringAPI, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REVENIUM_STRICT_METADATA", "1")
    client = client_for(sim, headers={"X-Revenium-Metadata": "not json"})
    with pytest.raises(MetadataError, match="X-Revenium-Metadata"):
        client.chat(model=MODEL, messages=MESSAGES)
    assert sim.requests == []


def test_bad_call_metadata_is_warned_and_the_call_goes_through(
    sim: OllamaSimulator, metered: FakeMeteringAPI, caplog: pytest.LogCaptureFixture
) -> None:
    response = client_for(sim).chat(
        model=MODEL,
        messages=MESSAGES,
        usage_metadata="acme",
    )
    assert response.message.content
    assert metering.flush(10.0)
    assert len(metered.records) == 1
    assert any("must be a mapping" in r.getMessage() for r in caplog.records)


def test_fifty_threads_each_keep_their_own_metadata(
    sim: OllamaSimulator, metered: FakeMeteringAPI
) -> None:
    client = client_for(sim)
    barrier = threading.Barrier(50)
    ids: dict[int, str] = {}

    def work(i: int) -> None:
        barrier.wait(10)
        if i % 2:
            ids[i] = client.chat(
                model=MODEL, messages=MESSAGES, usage_metadata={"trace_id": f"t{i}"}
            )._revenium_transaction_id
        else:
            with usage_metadata(trace_id=f"t{i}"):
                ids[i] = client.chat(model=MODEL, messages=MESSAGES)._revenium_transaction_id

    threads = [threading.Thread(target=work, args=(i,)) for i in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert metering.flush(20.0)
    assert {r["transactionId"]: r["traceId"] for r in metered.records} == {
        ids[i]: f"t{i}" for i in range(50)
    }


async def test_fifty_tasks_each_keep_their_own_metadata(
    sim: OllamaSimulator, metered: FakeMeteringAPI
) -> None:
    client = async_client_for(sim)

    async def work(i: int) -> str:
        if i % 2:
            stream = await client.chat(
                model=MODEL, messages=MESSAGES, stream=True, usage_metadata={"trace_id": f"t{i}"}
            )
            parts = [p async for p in stream]
            return str(parts[0]._revenium_transaction_id)
        async with usage_metadata(trace_id=f"t{i}"):
            response = await client.chat(model=MODEL, messages=MESSAGES)
            return str(response._revenium_transaction_id)

    ids = await asyncio.gather(*(work(i) for i in range(50)))
    assert await asyncio.to_thread(metering.flush, 20.0)
    assert {r["transactionId"]: r["traceId"] for r in metered.records} == {
        ids[i]: f"t{i}" for i in range(50)
    }


# --- the client's behaviour otherwise unchanged -------------------------------------------


def test_errors_are_the_clients_own(sim: OllamaSimulator, metered: FakeMeteringAPI) -> None:
    sim.reply = SimulatedReply(status=404, error='model "x" not found, try pulling it first')
    with pytest.raises(ollama.ResponseError) as raised:
        client_for(sim).chat(model="x", messages=MESSAGES, usage_metadata={"agent": "a"})
    assert raised.value.status_code == 404
    with OllamaSimulator() as gone:
        url = gone.url
    with pytest.raises(ConnectionError):
        ollama.Client(host=url).chat(model=MODEL, messages=MESSAGES)


def test_headers_host_parsing_and_other_functions(
    sim: OllamaSimulator, metered: FakeMeteringAPI, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OLLAMA_HOST", f":{sim.port}")  # ollama's own host parsing
    monkeypatch.setenv("OLLAMA_API_KEY", "ollama-key")
    client = ollama.Client(headers={"X-Team": "blue"})
    assert client.list() is not None
    assert client.show(MODEL) is not None
    assert client.ps() is not None
    assert list(client.pull(MODEL, stream=True))
    client.chat(model=MODEL, messages=MESSAGES)
    assert metering.flush(10.0)
    assert len(metered.records) == 1  # only the chat
    for request in sim.requests:
        assert request.headers["x-team"] == "blue"
        assert request.headers["authorization"] == "Bearer ollama-key"
        assert request.headers["user-agent"].startswith("ollama-python/")


class _ForwardProxy:
    """A plain HTTP forward proxy on loopback that counts what it forwarded."""

    def __init__(self) -> None:
        self.seen: list[str] = []
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                proxy.seen.append(self.path)
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                headers = {
                    k: v
                    for k, v in self.headers.items()
                    if k.lower() not in ("host", "proxy-connection")
                }
                answer = httpx.post(self.path, content=body, headers=headers, trust_env=False)
                self.send_response(answer.status_code)
                for name in ("content-type",):
                    self.send_header(name, answer.headers[name])
                self.send_header("content-length", str(len(answer.content)))
                self.end_headers()
                self.wfile.write(answer.content)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def forward_proxy() -> Iterator[_ForwardProxy]:
    proxy = _ForwardProxy()
    yield proxy
    proxy.close()


def test_environment_proxies_keep_working(
    sim: OllamaSimulator,
    metered: FakeMeteringAPI,
    forward_proxy: _ForwardProxy,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The simulator listens on 127.0.0.1; reach it by another name so that NO_PROXY's
    # loopback defaults do not apply, through the proxy that knows where it is.
    monkeypatch.setenv("HTTP_PROXY", forward_proxy.url)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    client = client_for(sim)
    assert client.chat(model=MODEL, messages=MESSAGES).message.content
    assert metering.flush(10.0)
    assert len(metered.records) == 1
    # The call went through the proxy, and so did its record (delivery honours it too).
    assert forward_proxy.seen == [f"{sim.url}/api/chat", f"{metered.url}/meter/v2/ai/completions"]
    [received] = metered.received
    assert received.headers["idempotency-key"] == metered.records[0]["transactionId"]
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    client_for(sim).chat(model=MODEL, messages=MESSAGES)
    assert [p for p in forward_proxy.seen if "/api/" in p] == [f"{sim.url}/api/chat"]


def test_a_given_transport_is_wrapped_not_replaced(
    sim: OllamaSimulator, metered: FakeMeteringAPI
) -> None:
    mine = httpx.HTTPTransport(retries=2)
    client = ollama.Client(host=sim.url, transport=mine)
    wrapper = client._client._transport
    assert isinstance(wrapper, ReveniumTransport)
    assert wrapper._inners.for_family(None) is mine  # type: ignore[arg-type]
    explicit = ollama.Client(host=sim.url, transport=ReveniumTransport())
    assert type(explicit._client._transport) is ReveniumTransport
    client.chat(model=MODEL, messages=MESSAGES)
    explicit.chat(model=MODEL, messages=MESSAGES)
    assert metering.flush(10.0)
    assert len(metered.records) == 2  # one each: never metered twice


def test_instrument_bare_httpx_clients(sim: OllamaSimulator, metered: FakeMeteringAPI) -> None:
    sync = instrument(httpx.Client(base_url=sim.url))
    again = instrument(sync)
    assert again is sync
    assert isinstance(sync._transport, ReveniumTransport)
    sync.post("/api/chat", json={"model": MODEL, "stream": False})
    async_http = instrument(httpx.AsyncClient(base_url=sim.url))
    assert isinstance(async_http._transport, AsyncReveniumTransport)
    with pytest.raises(TypeError):
        instrument(object())
    assert metering.flush(10.0)
    assert len(metered.records) == 1


def test_uninstall_leaves_no_trace_and_install_is_idempotent(sim: OllamaSimulator) -> None:
    client_module = sys.modules["ollama._client"]
    patched_chat = client_module.Client.chat
    assert metering.install() is False  # already installed at import
    before = client_for(sim)
    try:
        metering.uninstall()
        assert client_module.Client.chat is not patched_chat
        assert "usage_metadata" not in str(client_module.Client.chat.__code__.co_varnames)
        assert ollama.chat == ollama._client.chat
        assert not isinstance(ollama._client._client._transport, ReveniumTransport)
        assert not isinstance(before._client._transport, ReveniumTransport)
        fresh = client_for(sim)
        assert not isinstance(fresh._client._transport, ReveniumTransport)
        assert len(_instrumented) == 0
        with pytest.raises(TypeError):
            fresh.chat(model=MODEL, messages=MESSAGES, usage_metadata={})
    finally:
        assert metering.install() is True
    assert isinstance(client_for(sim)._client._transport, ReveniumTransport)
    assert isinstance(ollama._client._client._transport, ReveniumTransport)


def test_a_transport_serving_both_kinds_is_wrapped_for_its_client(
    metered: FakeMeteringAPI,
) -> None:
    mock = httpx.MockTransport(lambda request: httpx.Response(200, json={"done": True}))
    sync_http = instrument(httpx.Client(transport=mock))
    async_http = instrument(httpx.AsyncClient(transport=mock))
    assert isinstance(sync_http._transport, ReveniumTransport)
    assert isinstance(async_http._transport, AsyncReveniumTransport)
    assert sync_http.post("http://ollama.test/api/chat", json={}).status_code == 200
