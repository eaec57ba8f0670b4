"""The shipped test doubles, exercised over real loopback HTTP."""

from __future__ import annotations

import re
import socket
import threading
import time
import uuid
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import ollama
import orjson
import pytest

from revenium_ollama_transport.testing import (
    FakeMeteringAPI,
    OllamaSimulator,
    ReceivedMetering,
    SimulatedReply,
)

from ._raw_http import raw_exchange

GO_TIME = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?Z")
CHAT_BODY: dict[str, Any] = {"model": "llama3.2", "messages": [{"role": "user", "content": "hi"}]}
TOOL_CALL = {"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}


@pytest.fixture
def sim() -> Iterator[OllamaSimulator]:
    with OllamaSimulator() as simulator:
        yield simulator


@pytest.fixture
def client(sim: OllamaSimulator) -> Iterator[ollama.Client]:
    with ollama.Client(host=sim.url) as ollama_client:
        yield ollama_client


@pytest.fixture(scope="module")
def http() -> Iterator[httpx.Client]:
    # Shared: building a client (its TLS context) costs more than most tests here.
    with httpx.Client(timeout=5.0) as http_client:
        yield http_client


@pytest.fixture
def api() -> Iterator[FakeMeteringAPI]:
    with FakeMeteringAPI() as fake:
        yield fake


def chat(client: ollama.Client) -> ollama.ChatResponse:
    return client.chat(model="llama3.2", messages=CHAT_BODY["messages"], stream=False)


def chat_parts(client: ollama.Client) -> Iterator[ollama.ChatResponse]:
    return client.chat(model="llama3.2", messages=CHAT_BODY["messages"], stream=True)


# --- OllamaSimulator with the real ollama client ---


def test_chat_not_streamed_reaches_the_client(sim: OllamaSimulator, client: ollama.Client) -> None:
    sim.reply = SimulatedReply(
        tokens=["Hello", " world"], prompt_eval_count=12, done_reason="length"
    )
    response = chat(client)
    assert response.message.content == "Hello world"
    assert response.model == "llama3.2"
    assert (response.prompt_eval_count, response.eval_count) == (12, 2)
    assert response.done and response.done_reason == "length"
    assert response.created_at is not None and GO_TIME.fullmatch(response.created_at)
    (received,) = sim.requests
    assert (received.method, received.path) == ("POST", "/api/chat")
    assert received.json["stream"] is False
    assert received.headers["content-type"] == "application/json"


def test_chat_streamed_one_part_per_token(sim: OllamaSimulator, client: ollama.Client) -> None:
    sim.reply = SimulatedReply(tokens=["a", "b", "c"], prompt_eval_count=7, eval_count=40)
    parts = list(chat_parts(client))
    assert [p.message.content for p in parts] == ["a", "b", "c", ""]
    assert [p.done for p in parts] == [False, False, False, True]
    assert all(p.eval_count is None for p in parts[:-1])
    assert (parts[-1].prompt_eval_count, parts[-1].eval_count) == (7, 40)
    assert parts[-1].done_reason == "stop"


@pytest.mark.parametrize("where", ["intermediate", "final"])
def test_chat_thinking_then_content_then_tool_calls(
    sim: OllamaSimulator, client: ollama.Client, where: Any
) -> None:
    sim.reply = SimulatedReply(
        thinking=["Let me", " think"], tokens=["Sure"], tool_calls=[TOOL_CALL], tool_calls_on=where
    )
    parts = list(chat_parts(client))
    assert [p.message.thinking for p in parts[:2]] == ["Let me", " think"]
    assert [p.message.content for p in parts[:3]] == ["", "", "Sure"]
    with_calls = [i for i, p in enumerate(parts) if p.message.tool_calls]
    assert with_calls == ([3] if where == "intermediate" else [len(parts) - 1])
    calls = parts[with_calls[0]].message.tool_calls
    assert calls is not None
    call = calls[0]
    assert (call.function.name, dict(call.function.arguments)) == ("get_weather", {"city": "Paris"})
    assert parts[-1].done and parts[-1].eval_count == 3  # thinking pieces count as output

    whole = chat(client)
    assert (whole.message.thinking, whole.message.content) == ("Let me think", "Sure")
    assert [c.function.name for c in whole.message.tool_calls or ()] == ["get_weather"]


@pytest.mark.parametrize("stream", [True, False])
def test_generate(sim: OllamaSimulator, client: ollama.Client, stream: bool) -> None:
    sim.reply = SimulatedReply(tokens=["4", "2"], prompt_eval_count=9, model="served-name")
    if stream:
        parts = list(client.generate(model="llama3.2", prompt="answer?", stream=True))
    else:
        parts = [client.generate(model="llama3.2", prompt="answer?", stream=False)]
    assert "".join(p.response or "" for p in parts) == "42"
    final = parts[-1]
    assert final.done and final.model == "served-name"
    assert (final.prompt_eval_count, final.eval_count) == (9, 2)
    assert final.context and len(final.context) == 11
    assert sim.requests[0].path == "/api/generate"


def test_embed_one_vector_per_input(sim: OllamaSimulator, client: ollama.Client) -> None:
    sim.reply = SimulatedReply(embedding_dims=4, prompt_eval_count=6)
    many = client.embed(model="nomic-embed-text", input=["first", "second"])
    one = client.embed(model="nomic-embed-text", input="first")
    assert [len(v) for v in many.embeddings] == [4, 4]
    assert one.embeddings[0] == many.embeddings[0] != many.embeddings[1]
    assert abs(sum(x * x for x in one.embeddings[0]) - 1.0) < 1e-4  # normalised like Ollama
    assert (many.model, many.prompt_eval_count) == ("nomic-embed-text", 6)
    assert many.total_duration and many.load_duration


def test_legacy_embeddings_answer_only_the_vector(
    sim: OllamaSimulator, client: ollama.Client, http: httpx.Client
) -> None:
    assert len(client.embeddings(model="nomic-embed-text", prompt="hi").embedding) == 8
    raw = http.post(f"{sim.url}/api/embeddings", json={"model": "m", "prompt": "hi"}).json()
    assert list(raw) == ["embedding"]


def test_mid_stream_error_line_raises_response_error(
    sim: OllamaSimulator, client: ollama.Client
) -> None:
    sim.reply = SimulatedReply(tokens=["a", "b", "c"], error_after=2, error="runner crashed")
    seen: list[str] = []
    with pytest.raises(ollama.ResponseError) as caught:
        for part in chat_parts(client):
            seen.append(part.message.content or "")
    assert seen == ["a", "b"]
    assert (caught.value.error, caught.value.status_code) == ("runner crashed", -1)

    raw = raw_exchange(sim.port, "POST", "/api/chat", orjson.dumps(CHAT_BODY))
    assert raw.status == 200 and raw.complete
    assert raw.chunks[-1] == b'{"error":"runner crashed"}\n'
    assert not any(line.get("done") for line in raw.lines())


def test_error_after_without_streaming_is_a_500(
    sim: OllamaSimulator, client: ollama.Client
) -> None:
    sim.reply = SimulatedReply(error_after=1, error="runner crashed")
    with pytest.raises(ollama.ResponseError) as caught:
        chat(client)
    assert (caught.value.status_code, caught.value.error) == (500, "runner crashed")


def test_status_404_then_fallback_to_default_reply(
    sim: OllamaSimulator, client: ollama.Client
) -> None:
    sim.queue(SimulatedReply(status=404), SimulatedReply(status=503, error="server busy"))
    with pytest.raises(ollama.ResponseError) as not_found:
        client.chat(model="nope", messages=[], stream=True).__next__()
    assert not_found.value.status_code == 404
    assert not_found.value.error == 'model "nope" not found, try pulling it first'
    with pytest.raises(ollama.ResponseError) as busy:
        chat(client)
    assert (busy.value.status_code, busy.value.error) == (503, "server busy")
    assert chat(client).message.content == "The sky is blue."


@pytest.mark.parametrize("stream", [True, False])
def test_drop_after_makes_the_client_raise(
    sim: OllamaSimulator, client: ollama.Client, stream: bool
) -> None:
    sim.reply = SimulatedReply(tokens=["a", "b", "c"], drop_after=2)
    seen: list[str] = []
    with pytest.raises(httpx.RemoteProtocolError):
        if stream:
            seen.extend(part.message.content or "" for part in chat_parts(client))
        else:
            chat(client)
    assert seen == (["a", "b"] if stream else [])
    raw = raw_exchange(sim.port, "POST", "/api/chat", orjson.dumps(CHAT_BODY))
    assert not raw.complete


def test_drop_after_every_line_still_omits_the_terminator(sim: OllamaSimulator) -> None:
    sim.reply = SimulatedReply(tokens=["a"], drop_after=99)
    raw = raw_exchange(sim.port, "POST", "/api/chat", orjson.dumps(CHAT_BODY))
    assert raw.lines()[-1]["done"] is True and not raw.complete


@pytest.mark.parametrize("stream", [True, False])
def test_gzip_is_decoded_by_httpx(
    sim: OllamaSimulator, client: ollama.Client, stream: bool
) -> None:
    sim.reply = SimulatedReply(tokens=["x", "y"], gzip=True)
    parts = list(chat_parts(client)) if stream else [chat(client)]
    assert "".join(p.message.content or "" for p in parts) == "xy"
    assert parts[-1].eval_count == 2


def test_gzip_stream_flushes_one_line_per_chunk(sim: OllamaSimulator) -> None:
    sim.reply = SimulatedReply(tokens=["x", "y", "z"], gzip=True)
    raw = raw_exchange(sim.port, "POST", "/api/chat", orjson.dumps(CHAT_BODY))
    assert raw.headers["content-encoding"] == "gzip" and raw.complete
    assert raw.chunks[0][:2] == b"\x1f\x8b"
    decoder = zlib.decompressobj(wbits=31)
    decoded = [decoder.decompress(chunk) for chunk in raw.chunks]
    assert decoded[-1] == b""  # the gzip trailer travels alone
    assert [orjson.loads(line).get("done") for line in decoded[:-1]] == [False] * 3 + [True]
    assert decoder.eof


def test_stream_framing_and_field_order(sim: OllamaSimulator) -> None:
    sim.reply = SimulatedReply(tokens=["Hi", " there"], prompt_eval_cached_count=4)
    body = {"model": "m", "messages": []}  # no "stream": the server streams
    raw = raw_exchange(sim.port, "POST", "/api/chat", orjson.dumps(body))
    assert raw.status == 200 and raw.complete
    assert raw.headers["content-type"] == "application/x-ndjson"
    assert raw.headers["transfer-encoding"] == "chunked"
    assert "content-length" not in raw.headers and "server" not in raw.headers
    assert all(c.endswith(b"\n") and c.count(b"\n") == 1 for c in raw.chunks)
    assert re.fullmatch(
        rb'\{"model":"m","created_at":"[^"]+","message":\{"role":"assistant","content":"Hi"\},'
        rb'"done":false\}\n',
        raw.chunks[0],
    )
    first, *_, final = raw.lines()
    assert GO_TIME.fullmatch(first["created_at"])
    assert list(final) == [
        "model",
        "created_at",
        "message",
        "done",
        "done_reason",
        "total_duration",
        "load_duration",
        "prompt_eval_count",
        "prompt_eval_duration",
        "eval_count",
        "eval_duration",
        "prompt_eval_cached_count",
    ]


def test_zero_metrics_are_omitted(sim: OllamaSimulator, http: httpx.Client) -> None:
    sim.reply = SimulatedReply(
        load_duration=0, prompt_eval_count=0, eval_duration=0, done_reason=None
    )
    streamed = raw_exchange(sim.port, "POST", "/api/generate", orjson.dumps({"model": "m"}))
    final = streamed.lines()[-1]
    answer = http.post(f"{sim.url}/api/generate", json={"model": "m", "stream": False})
    assert answer.headers["content-type"] == "application/json; charset=utf-8"
    assert int(answer.headers["content-length"]) == len(answer.content)
    for doc in (final, answer.json()):
        assert doc["done"] is True and "eval_count" in doc and "total_duration" in doc
        absent = {"load_duration", "prompt_eval_count", "eval_duration", "done_reason"}
        assert not absent & doc.keys()
        assert "prompt_eval_cached_count" not in doc


def test_strings_are_escaped_like_go(sim: OllamaSimulator, client: ollama.Client) -> None:
    sim.reply = SimulatedReply(tokens=["<b>&"])
    raw = raw_exchange(sim.port, "POST", "/api/chat", orjson.dumps(CHAT_BODY))
    assert b'"content":"\\u003cb\\u003e\\u0026"' in raw.chunks[0]
    assert chat(client).message.content == "<b>&"


def test_pass_through_routes(
    sim: OllamaSimulator, client: ollama.Client, http: httpx.Client
) -> None:
    sim.queue(SimulatedReply(status=503))  # must survive every pass-through call
    assert [m.model for m in client.list().models] == sim.models
    assert [m.name for m in client.ps().models] == sim.models
    assert client.show("llama3.2").capabilities == ["completion", "tools"]
    progress = [p.status for p in client.pull("llama3.2", stream=True)]
    assert progress[0] == "pulling manifest" and progress[-1] == "success"
    assert client.pull("llama3.2").status == "success"
    assert client.delete("llama3.2").status == "success"
    assert client.copy("llama3.2", "mine").status == "success"
    assert http.get(f"{sim.url}/api/version").json() == {"version": "0.33.0"}
    assert http.get(f"{sim.url}/").text == "Ollama is running"
    head = http.head(f"{sim.url}/")
    assert (head.status_code, head.headers["content-length"], head.content) == (200, "17", b"")
    missing = http.post(f"{sim.url}/api/nothing", json={})
    assert (missing.status_code, missing.text) == (404, "404 page not found")
    assert http.get(f"{sim.url}/api/chat").status_code == 405
    with pytest.raises(ollama.ResponseError) as busy:
        chat(client)
    assert busy.value.status_code == 503


def test_bad_requests_consume_no_reply(sim: OllamaSimulator, http: httpx.Client) -> None:
    sim.queue(SimulatedReply(status=500))
    empty = http.post(f"{sim.url}/api/chat")
    assert (empty.status_code, empty.json()) == (400, {"error": "missing request body"})
    nameless = http.post(f"{sim.url}/api/chat", json={"messages": []})
    assert (nameless.status_code, nameless.json()) == (400, {"error": "model is required"})
    bad_input = http.post(f"{sim.url}/api/embed", json={"model": "m", "input": [1]})
    assert bad_input.status_code == 400
    assert http.post(f"{sim.url}/api/chat", json={"model": "m"}).status_code == 500


def test_keep_alive_connection_is_reused(sim: OllamaSimulator, client: ollama.Client) -> None:
    for _ in range(2):
        assert chat(client).done
        assert list(chat_parts(client))[-1].done
    client.embed(model="m", input="x")
    client.list()
    assert len(sim.requests) == 6
    assert sim.connections_accepted == 1


def test_concurrent_clients(sim: OllamaSimulator) -> None:
    sim.reply = SimulatedReply(tokens=["a", "b", "c", "d"], chunk_delay=0.005)

    def one_call(_: int) -> str:
        with ollama.Client(host=sim.url) as own:
            return "".join(p.message.content or "" for p in chat_parts(own))

    with ThreadPoolExecutor(max_workers=8) as pool:
        assert list(pool.map(one_call, range(8))) == ["abcd"] * 8
    assert len(sim.wait_for_requests(8)) == 8
    assert sim.connections_accepted == 8


def test_client_timeout_and_stop_during_first_byte_delay(sim: OllamaSimulator) -> None:
    sim.reply = SimulatedReply(first_byte_delay=30.0)
    with ollama.Client(host=sim.url, timeout=0.2) as impatient, pytest.raises(httpx.ReadTimeout):
        chat(impatient)
    started = time.monotonic()
    sim.stop()
    assert time.monotonic() - started < 2.0
    assert not sim.running


def test_stop_cuts_a_live_stream(sim: OllamaSimulator, http: httpx.Client) -> None:
    sim.reply = SimulatedReply(tokens=["a", "b"], chunk_delay=30.0)
    with http.stream("POST", f"{sim.url}/api/chat", json=CHAT_BODY) as response:
        lines = response.iter_lines()
        assert orjson.loads(next(lines))["message"]["content"] == "a"
        started = time.monotonic()
        sim.stop()
        assert time.monotonic() - started < 2.0
        with pytest.raises(httpx.RemoteProtocolError):
            next(lines)


def test_wait_for_requests_times_out_with_context(sim: OllamaSimulator) -> None:
    with pytest.raises(TimeoutError, match="expected 1 request"):
        sim.wait_for_requests(1, timeout=0.05)


def test_restart_gets_a_new_port() -> None:
    simulator = OllamaSimulator()
    with pytest.raises(RuntimeError):
        _ = simulator.url
    first = simulator.start().port
    simulator.stop()
    simulator.stop()  # idempotent
    with simulator:
        assert simulator.host == f"127.0.0.1:{simulator.port}"
        assert httpx.get(simulator.url).text == "Ollama is running"
    assert first > 0


def test_simulated_reply_rejects_nonsense() -> None:
    with pytest.raises(ValueError):
        SimulatedReply(status=302)
    with pytest.raises(ValueError):
        SimulatedReply(tool_calls_on="sometimes")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        SimulatedReply(drop_after=-1)
    reply = SimulatedReply(tokens=["a"], thinking=["b", "c"])
    assert reply.output_tokens == 3 and reply.tokens == ("a",)


# --- FakeMeteringAPI over raw httpx ---


def record(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "transactionId": str(uuid.uuid4()),
        "model": "llama3.2",
        "provider": "OLLAMA",
        "costType": "AI",
        "inputTokenCount": 12,
        "outputTokenCount": 5,
        "totalTokenCount": 17,
        "isStreamed": True,
        "requestTime": "2025-01-02T03:04:05.678Z",
        "responseTime": "2025-01-02T03:04:06.090123+00:00",
        "completionStartTime": "2025-01-02T03:04:05.801Z",
        "requestDuration": 412,
        "stopReason": "END",
        "operationType": "CHAT",
        "subscriber": {"id": "u1", "email": "u1@example.com", "credential": {"name": "k"}},
    }
    base.update(changes)
    return {k: v for k, v in base.items() if v is not DROP}


DROP = object()


def post(http: httpx.Client, api: FakeMeteringAPI, body: Any, **headers: str) -> httpx.Response:
    return http.post(f"{api.url}/meter/v2/ai/completions", json=body, headers=headers)


def test_valid_record_is_stored(api: FakeMeteringAPI, http: httpx.Client) -> None:
    sent = record()
    answer = post(http, api, sent, **{"x-api-key": "hak_x", "Idempotency-Key": "k-1"})
    assert answer.status_code == 201
    assert answer.json()["resourceType"] == "ai_completion" and answer.json()["id"]
    assert api.wait_for_records(1) == [sent]
    (seen,) = api.received
    assert (seen.path, seen.status, seen.record) == ("/meter/v2/ai/completions", 201, sent)
    assert seen.headers["x-api-key"] == "hak_x" and seen.headers["idempotency-key"] == "k-1"


def test_only_the_completions_endpoint_exists(api: FakeMeteringAPI, http: httpx.Client) -> None:
    assert http.post(f"{api.url}/v2/ai/completions", json=record()).status_code == 201
    assert http.post(f"{api.url}/meter/v2/ai/other", json=record()).status_code == 404
    assert http.get(f"{api.url}/meter/v2/ai/completions").status_code == 405
    assert len(api.records) == 1


def test_canned_answers_come_first_in_order(api: FakeMeteringAPI, http: httpx.Client) -> None:
    api.respond_with(503, times=2)
    api.respond_with(429, retry_after=2)
    api.respond_with(409, retry_after=1.0)
    api.respond_with(401, body={"error": "bad key"}, headers={"x-should-retry": "false"})
    answers = [post(http, api, record()) for _ in range(6)]
    assert [a.status_code for a in answers] == [503, 503, 429, 409, 401, 201]
    assert answers[2].headers["retry-after"] == "2"
    assert answers[3].headers["retry-after"] == "1"
    assert answers[3].json()["error"] == "idempotency_key_in_progress"
    assert answers[4].json() == {"error": "bad key"}
    assert answers[4].headers["x-should-retry"] == "false"
    assert "retry-after" not in answers[0].headers
    assert len(api.records) == 1
    assert [r.status for r in api.received] == [503, 503, 429, 409, 401, 201]


def test_duplicates_are_stored_once(api: FakeMeteringAPI, http: httpx.Client) -> None:
    first = record()
    one = post(http, api, first, **{"Idempotency-Key": "key-1"})
    again = post(http, api, first, **{"Idempotency-Key": "key-1"})
    same_transaction = post(http, api, first, **{"Idempotency-Key": "key-2"})
    assert [r.status_code for r in (one, again, same_transaction)] == [201, 201, 201]
    assert one.json() == again.json() == same_transaction.json()
    assert api.records == [first]
    mismatch = post(http, api, record(), **{"Idempotency-Key": "key-1"})
    assert (mismatch.status_code, mismatch.json()["error"]) == (409, "idempotency_key_mismatch")
    assert post(http, api, record()).status_code == 201
    assert len(api.records) == 2


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("inputTokenCount", DROP),
        ("transactionId", ""),
        ("inputTokenCount", "12"),
        ("outputTokenCount", True),
        ("totalTokenCount", -1),
        ("isStreamed", "true"),
        ("requestDuration", 1.5),
        ("requestTime", "yesterday"),
        ("completionStartTime", "2025-02-30T00:00:00Z"),
        ("stopReason", "DONE"),
        ("operationType", "CHATTING"),
        ("traceId", None),
        ("agent", "x" * 256),
        ("productName", "x" * 225),
        ("traceType", "has space"),
        ("responseQualityScore", 1000.0),
        ("subscriber", {"id": "u", "credential": {"name": None}}),
        ("inputTokens", 3),
    ],
)
def test_invalid_records_get_400_naming_the_field(
    api: FakeMeteringAPI, http: httpx.Client, field: str, value: Any
) -> None:
    answer = post(http, api, record(**{field: value}))
    assert answer.status_code == 400
    assert answer.json()["field"].startswith(field)
    assert field in answer.json()["message"]
    assert api.records == []
    (seen,) = api.received
    assert seen.status == 400 and seen.error and field in seen.error


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"traceId": None}, "traceId"),
        ({"inputTokenCount": None}, "inputTokenCount"),
        ({"subscriber": {"id": None}}, "subscriber"),
    ],
)
def test_null_is_refused_rather_than_ignored(
    api: FakeMeteringAPI, http: httpx.Client, changes: dict[str, Any], field: str
) -> None:
    answer = post(http, api, record(**changes))
    assert answer.status_code == 400
    assert answer.json()["field"] == field
    assert "must not be null" in answer.json()["message"]


def test_values_at_the_limits_are_accepted(api: FakeMeteringAPI, http: httpx.Client) -> None:
    edge = record(
        agent="x" * 255,
        productName="p" * 224,
        traceType="batch_job-1",
        responseQualityScore=0.5,
        totalCost=0,
        errorCode=503,
        inputTokenCount=0,
    )
    assert post(http, api, edge).status_code == 201
    raw = http.post(f"{api.url}/meter/v2/ai/completions", content=b"{not json")
    assert (raw.status_code, raw.json()["error"]) == (400, "invalid_json")


def test_hang_mode_never_answers(api: FakeMeteringAPI, http: httpx.Client) -> None:
    api.set_mode("hang")
    with pytest.raises(httpx.ReadTimeout):
        http.post(f"{api.url}/meter/v2/ai/completions", json=record(), timeout=0.2)
    (held,) = api.wait_for_received(1)
    assert held.status is None and held.record is not None
    api.set_mode("normal")
    assert post(http, api, record()).status_code == 201
    assert len(api.records) == 1


def test_stop_releases_a_hung_request(api: FakeMeteringAPI) -> None:
    api.set_mode("hang")
    errors: list[BaseException] = []

    def patient() -> None:
        try:
            httpx.post(f"{api.url}/meter/v2/ai/completions", json=record(), timeout=30.0)
        except httpx.HTTPError as exc:
            errors.append(exc)

    worker = threading.Thread(target=patient)
    worker.start()
    api.wait_for_received(1)
    started = time.monotonic()
    api.stop()
    assert time.monotonic() - started < 2.0
    worker.join(5.0)
    assert not worker.is_alive()
    assert len(errors) == 1 and isinstance(errors[0], httpx.TransportError)


def test_down_mode_closes_without_answering(api: FakeMeteringAPI, http: httpx.Client) -> None:
    api.set_mode("down")
    with pytest.raises(httpx.RemoteProtocolError):
        post(http, api, record())
    assert [r.status for r in api.received] == [None]
    api.set_mode("normal")
    assert post(http, api, record()).status_code == 201
    with pytest.raises(ValueError):
        api.set_mode("sideways")  # type: ignore[arg-type]


def test_unavailable_mode_answers_503_and_stores_nothing(
    api: FakeMeteringAPI, http: httpx.Client
) -> None:
    api.set_mode("unavailable")
    answer = post(http, api, record())
    assert (answer.status_code, answer.json()["error"]) == (503, "service_unavailable")
    assert [r.status for r in api.received] == [503]
    assert api.records == []
    api.set_mode("unavailable", status=429, retry_after=2)  # a rate limit
    answer = post(http, api, record())
    assert (answer.status_code, answer.headers["retry-after"]) == (429, "2")
    assert answer.json()["error"] == "too_many_requests"
    assert [r.status for r in api.received] == [503, 429]
    api.set_mode("normal")
    assert post(http, api, record()).status_code == 201
    with pytest.raises(ValueError):
        api.set_mode("hang", status=429)


def test_stop_listening_refuses_connections_then_serves_the_same_port_again(
    api: FakeMeteringAPI, http: httpx.Client
) -> None:
    kept = record()
    assert post(http, api, kept).status_code == 201
    url, port = api.url, api.port
    api.stop_listening()
    assert not api.running
    assert (api.url, api.port) == (url, port)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5.0).close()
    with pytest.raises(httpx.ConnectError):  # the client's keep-alive connection was cut too
        post(http, api, record())
    with pytest.raises(RuntimeError):
        api.stop_listening()
    api.resume_listening()
    assert api.running and api.port == port
    assert post(http, api, record()).status_code == 201
    assert len(api.records) == 2 and api.records[0] == kept  # the state outlived the outage
    with pytest.raises(RuntimeError):
        api.resume_listening()
    api.stop_listening()
    api.stop()  # also gives the kept port back
    assert not api.running


def test_api_key_is_checked_when_expected(api: FakeMeteringAPI, http: httpx.Client) -> None:
    api.expected_api_key = "hak_test"
    assert post(http, api, record()).status_code == 401
    assert post(http, api, record(), **{"x-api-key": "hak_wrong"}).status_code == 401
    assert post(http, api, record(), **{"x-api-key": "hak_test"}).status_code == 201
    assert [r.status for r in api.received] == [401, 401, 201]


def test_wait_for_records_explains_a_timeout(api: FakeMeteringAPI, http: httpx.Client) -> None:
    post(http, api, record(stopReason="NOPE"))
    with pytest.raises(TimeoutError, match=r"stored 0.*400 \(stopReason"):
        api.wait_for_records(1, timeout=0.05)


def test_clear_resets_everything(api: FakeMeteringAPI, http: httpx.Client) -> None:
    kept = record()
    post(http, api, kept, **{"Idempotency-Key": "k"})
    api.respond_with(500, times=3)
    api.clear()
    assert api.records == [] and api.received == []
    assert post(http, api, kept, **{"Idempotency-Key": "k"}).status_code == 201
    assert api.records == [kept]


def test_concurrent_posts_are_all_kept(api: FakeMeteringAPI, http: httpx.Client) -> None:
    sent = [record() for _ in range(24)]

    def send(body: dict[str, Any]) -> int:
        return post(http, api, body).status_code

    with ThreadPoolExecutor(max_workers=8) as pool:
        assert set(pool.map(send, sent)) == {201}
    stored = api.wait_for_records(24)
    assert sorted(r["transactionId"] for r in stored) == sorted(r["transactionId"] for r in sent)
    assert all(isinstance(r, ReceivedMetering) for r in api.received)
