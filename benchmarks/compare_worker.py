"""One contender of ``compare.py``, in a process of its own.

Each contender instruments globally (patches ``ollama``, ``openai`` or httpx), so each
runs in its own process: ``python compare_worker.py CONTENDER`` sets the contender up,
says it is ready, then runs what ``compare.py`` asks for, one JSON line in and one out:

- ``{"op": "run", "scenario": S, "n": N}``: N timed calls, then (untimed) what they
  collected flushed -> ``{"us": [...]}`` (with ``"warmup": true``, untimed);
- ``{"op": "cpu", "scenario": S}``: once the contender has flushed what it collected, the
  process's CPU time (all threads) per call of S so far -> ``{"cpu_us": ...}``;
- ``{"op": "check", "scenario": S}``: one call, then what the contender recorded for it
  -> ``{"check": "ok" | "no record" | "wrong: ..."}``;
- ``{"op": "quit"}``.

Two more modes run once and exit: ``--import-time`` (how long importing and setting up
the contender takes beyond ``import ollama, httpx``) and ``--memory N`` (resident memory
while N calls are made with the contender's collector unreachable).

Answers go to the file descriptor that was stdout when the process started; stdout itself
is pointed at stderr, so that nothing a contender prints can garble them. Every contender
sends what it records to this machine only: the fake metering API on 127.0.0.1, or
in-memory OpenTelemetry exporters, or (``--memory``) a closed port on 127.0.0.1. An audit
hook refuses, and counts, any connection or name lookup for another host.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import importlib
import os
import random
import resource
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Protocol

import orjson

# Runs as a script: its own directory is on the path, so the shared modules import bare.
from _metering_api import MeteringAPIProcess
from _ollama_mock import (
    COMPLETION_TOKENS,
    EMBED_MODEL,
    EMBED_TOKENS,
    LARGE,
    MODEL,
    PROMPT_TOKENS,
    SMALL,
    SSE_COMPLETION_TOKENS,
    mock_transport,
    openai_family,
)

OLLAMA_URL = "http://ollama.bench"
CONCURRENT = 50
# Transaction ids made ahead for the records-discarded diagnostic: more than a run takes.
CALLER_ONLY_IDS = 200_000

# scenario -> (records one call makes, the tokens Ollama reported for each)
EXPECTED: dict[str, tuple[int, tuple[int, int]]] = {
    "chat_small": (1, (PROMPT_TOKENS, COMPLETION_TOKENS)),
    "chat_2kb": (1, (PROMPT_TOKENS, COMPLETION_TOKENS)),
    "chat_stream": (1, (PROMPT_TOKENS, COMPLETION_TOKENS)),
    "embed": (1, (EMBED_TOKENS, 0)),
    "openai_stream": (1, (PROMPT_TOKENS, SSE_COMPLETION_TOKENS)),
    "async50": (CONCURRENT, (PROMPT_TOKENS, COMPLETION_TOKENS)),
}

# --- keeping everything on this machine --------------------------------------------------

blocked: list[str] = []


def _local(host: object) -> bool:
    if isinstance(host, bytes):
        host = host.decode(errors="replace")
    if not isinstance(host, str):
        return True  # not a network address (a Unix socket path, a file descriptor)
    return host in ("localhost", "::1", "", "ollama.bench") or host.startswith("127.")


def _guard(event: str, args: tuple[Any, ...]) -> None:
    if event == "socket.connect":
        address = args[1]
        if isinstance(address, tuple) and not _local(address[0]):
            blocked.append(f"connect {address[0]}")
            raise PermissionError(f"benchmark: no connection to {address[0]} allowed")
    elif event == "socket.getaddrinfo" and not _local(args[0]):
        blocked.append(f"lookup {args[0]!r}")
        raise PermissionError(f"benchmark: no name lookup of {args[0]!r} allowed")


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then let go)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


# --- what a contender records ------------------------------------------------------------

Tokens = tuple[Any, Any, str]  # (input, output, a note)


class Sink(Protocol):
    def drain(self) -> None:
        """Forgets everything recorded so far."""

    def read(self, expected: int, timeout: float) -> list[Tokens] | None:
        """What was recorded since ``drain`` (waiting up to ``timeout`` for ``expected``
        records); None when the contender records no tokens at all."""


class NoSink:
    def drain(self) -> None:
        pass

    def read(self, expected: int, timeout: float) -> list[Tokens] | None:
        return None


class MeteringAPISink:
    """Records delivered to the fake metering API; ``flush`` first, if there is one."""

    def __init__(self, api: MeteringAPIProcess, flush: Callable[[], object]) -> None:
        self.api = api
        self.flush = flush

    def drain(self) -> None:
        self.flush()
        self.api.records()

    def read(self, expected: int, timeout: float) -> list[Tokens] | None:
        deadline = time.monotonic() + timeout
        got: list[dict[str, Any]] = []
        self.flush()
        while True:
            got += self.api.records()
            if len(got) >= expected or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        time.sleep(0.1)  # anything more than expected is worth knowing too
        got += self.api.records()
        return [
            (r.get("inputTokenCount"), r.get("outputTokenCount"), r.get("_refused_because", ""))
            for r in got
        ]


INPUT_KEYS = ("gen_ai.usage.input_tokens", "gen_ai.usage.prompt_tokens")
OUTPUT_KEYS = ("gen_ai.usage.output_tokens", "gen_ai.usage.completion_tokens")


class SpanSink:
    """Spans from an in-memory exporter; a span carrying gen_ai.usage.* is a record."""

    def __init__(self, provider: Any, exporter: Any, with_tokens: bool = True) -> None:
        self.provider = provider
        self.exporter = exporter
        self.with_tokens = with_tokens

    def drain(self) -> None:
        self.provider.force_flush()
        self.exporter.clear()

    def read(self, expected: int, timeout: float) -> list[Tokens] | None:
        self.provider.force_flush()
        spans = self.exporter.get_finished_spans()
        self.exporter.clear()
        if not self.with_tokens:
            return None
        found: list[Tokens] = []
        for span in spans:
            attributes = dict(span.attributes or {})
            tokens_in = next((attributes[k] for k in INPUT_KEYS if k in attributes), None)
            tokens_out = next((attributes[k] for k in OUTPUT_KEYS if k in attributes), None)
            if tokens_in is not None or tokens_out is not None:
                found.append((tokens_in, tokens_out, ""))
        return found


# --- the contenders ------------------------------------------------------------------------


@dataclass
class Setup:
    """A contender, set up: how to make clients, and where its records go."""

    sink: Sink = field(default_factory=NoSink)
    records: bool = True  # False: records nothing at all (the baseline, a null transport)
    # Wraps the mock transport a client is given (a transport-level contender); None: as is.
    wrap: Callable[[Any, bool], Any] | None = None
    flush: Callable[[], object] = lambda: None
    stats: Callable[[], dict[str, Any]] = dict
    notes: list[str] = field(default_factory=list)
    cleanup: list[Callable[[], object]] = field(default_factory=list)


class NullTransport:
    """A transport that does nothing but forward: the cost of being a transport at all."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def handle_request(self, request: Any) -> Any:
        return self._inner.handle_request(request)

    async def handle_async_request(self, request: Any) -> Any:
        return await self._inner.handle_async_request(request)

    def close(self) -> None:
        self._inner.close()

    async def aclose(self) -> None:
        await self._inner.aclose()


def _null_transport(inner: Any, asynchronous: bool) -> Any:
    return NullTransport(inner)


def _otel_providers(down: int | None, logs: bool = False) -> tuple[Any, Any]:
    """The OpenTelemetry SDK set up as an application does: spans through a
    BatchSpanProcessor, metrics through a reader, (``logs``) events through a batch log
    processor; all kept in memory, or (``down``) sent by OTLP/HTTP to a closed port."""
    trace = importlib.import_module("opentelemetry.trace")
    metrics = importlib.import_module("opentelemetry.metrics")
    trace_sdk = importlib.import_module("opentelemetry.sdk.trace")
    trace_export = importlib.import_module("opentelemetry.sdk.trace.export")
    metrics_sdk = importlib.import_module("opentelemetry.sdk.metrics")
    metrics_export = importlib.import_module("opentelemetry.sdk.metrics.export")
    if down is None:
        memory = importlib.import_module("opentelemetry.sdk.trace.export.in_memory_span_exporter")
        exporter = memory.InMemorySpanExporter()
        reader = metrics_export.InMemoryMetricReader()
    else:
        otlp = "opentelemetry.exporter.otlp.proto.http"
        url = f"http://127.0.0.1:{down}"
        exporter = importlib.import_module(f"{otlp}.trace_exporter").OTLPSpanExporter(
            endpoint=f"{url}/v1/traces"
        )
        metric_exporter = importlib.import_module(f"{otlp}.metric_exporter").OTLPMetricExporter(
            endpoint=f"{url}/v1/metrics"
        )
        reader = metrics_export.PeriodicExportingMetricReader(metric_exporter)
    provider = trace_sdk.TracerProvider()
    provider.add_span_processor(trace_export.BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    metrics.set_meter_provider(metrics_sdk.MeterProvider(metric_readers=[reader]))
    if logs:
        logs_api = importlib.import_module("opentelemetry._logs")
        logs_sdk = importlib.import_module("opentelemetry.sdk._logs")
        logs_export = importlib.import_module("opentelemetry.sdk._logs.export")
        if down is None:
            memory_logs = getattr(logs_export, "InMemoryLogRecordExporter", None)
            memory_logs = memory_logs or logs_export.InMemoryLogExporter
            log_exporter = memory_logs()
        else:
            log_exporter = importlib.import_module(
                "opentelemetry.exporter.otlp.proto.http._log_exporter"
            ).OTLPLogExporter(endpoint=f"http://127.0.0.1:{down}/v1/logs")
        logger_provider = logs_sdk.LoggerProvider()
        logger_provider.add_log_record_processor(logs_export.BatchLogRecordProcessor(log_exporter))
        logs_api.set_logger_provider(logger_provider)
    return provider, exporter


def _ours(installed: bool, down: int | None) -> Setup:
    setup = Setup()
    api: MeteringAPIProcess | None = None
    if down is None:
        api = MeteringAPIProcess()
        setup.cleanup.append(api.close)
    os.environ["REVENIUM_METERING_API_KEY"] = "hak_bench_key"
    os.environ["REVENIUM_METERING_BASE_URL"] = (
        f"http://127.0.0.1:{down}" if api is None else api.url
    )
    if down is not None:
        os.environ["REVENIUM_SPOOL_DIR"] = "off"
    elif "REVENIUM_SPOOL_DIR" not in os.environ:
        spool = tempfile.mkdtemp(prefix="bench-spool-")  # the spool as by default, our own
        os.environ["REVENIUM_SPOOL_DIR"] = spool
    metering: Any = importlib.import_module("revenium_ollama_transport")
    setup.flush = lambda: metering.flush(30.0)
    setup.stats = metering.stats
    if not installed:
        metering.uninstall()
        transport: Any = importlib.import_module("revenium_ollama_transport")

        def wrap(inner: Any, asynchronous: bool) -> Any:
            if asynchronous:
                return transport.AsyncReveniumTransport(inner)
            return transport.ReveniumTransport(inner)

        setup.wrap = wrap
    if api is not None:
        setup.sink = MeteringAPISink(api, setup.flush)
    return setup


def _ours_caller_only(down: int | None) -> Setup:
    """Installed, every record discarded as it is made: the caller's path alone, without
    the delivery thread's work (a diagnostic, not a way anyone would run it)."""
    os.environ["REVENIUM_SPOOL_DIR"] = "off"
    importlib.import_module("revenium_ollama_transport")
    sink: Any = importlib.import_module("revenium_ollama_transport._sink")
    sink.set_default_sink(lambda observation: None)
    # The delivery thread keeps transaction ids made ahead; without it, they are made here,
    # more than any run takes, so that calls do not format their ids themselves.
    ids: Any = importlib.import_module("revenium_ollama_transport._ids")
    ids.RESERVE = CALLER_ONLY_IDS
    ids.replenish()
    return Setup(records=False)


# Objects of each kind _churn makes between batches.
CHURN_EACH = 1_200


def _churn() -> None:
    """Makes 1,200 each of small dictionaries (holding a string and a list), tuples, lists,
    strings and bytes, then frees them in shuffled order: the kind of work that delivering
    a batch's records does to the interpreter's allocator and garbage collector, with
    nothing delivered."""
    rng = random.Random(1)
    made: list[object] = []
    for i in range(CHURN_EACH):
        made += (
            {"a": i, "b": str(i), "c": [i]},
            (i, str(i)),
            [i, i + 1, i + 2],
            "y" * rng.randrange(10, 120) + str(i),
            b"x" * rng.randrange(20, 400),
        )
    rng.shuffle(made)
    made.clear()


def _churned(setup: Setup) -> Setup:
    """A diagnostic contender: ``setup``, objects churned after each flush (see _churn)."""
    flush = setup.flush

    def flush_then_churn() -> None:
        flush()
        _churn()

    setup.flush = flush_then_churn
    return setup


def _revenium_sdk(down: int | None, openai_too: bool = True) -> Setup:
    setup = Setup()
    api: MeteringAPIProcess | None = None
    if down is None:
        # The fake API's rules refuse this SDK's explicit nulls: take them and say so.
        api = MeteringAPIProcess(accept_all=True)
        setup.cleanup.append(api.close)
    os.environ["REVENIUM_METERING_API_KEY"] = "hak_bench_key"
    os.environ["REVENIUM_METERING_BASE_URL"] = (
        f"http://127.0.0.1:{down}" if api is None else api.url
    )
    importlib.import_module("revenium_middleware.ollama")
    if openai_too:
        importlib.import_module("revenium_middleware.openai")
    root: Any = importlib.import_module("revenium_middleware")
    flush = getattr(root, "flush_metering", None)
    if flush is not None:
        setup.flush = flush
    if api is not None:
        setup.sink = MeteringAPISink(api, setup.flush)
    return setup


def _openllmetry(down: int | None) -> Setup:
    provider, exporter = _otel_providers(down)
    module: Any = importlib.import_module("opentelemetry.instrumentation.ollama")
    module.OllamaInstrumentor().instrument(tracer_provider=provider)
    setup = Setup(flush=provider.force_flush)
    if down is None:
        setup.sink = SpanSink(provider, exporter)
    return setup


def _openlit(down: int | None) -> Setup:
    provider, exporter = _otel_providers(down, logs=True)
    pricing = Path(tempfile.mkdtemp(prefix="bench-openlit-")) / "pricing.json"
    pricing.write_text("{}")  # else it downloads its price list at init
    openlit: Any = importlib.import_module("openlit")
    openlit.init(pricing_json=str(pricing), collect_gpu_stats=False)
    setup = Setup(flush=provider.force_flush)
    if down is None:
        setup.sink = SpanSink(provider, exporter)
    return setup


def _otel_httpx(down: int | None) -> Setup:
    provider, exporter = _otel_providers(down)
    module: Any = importlib.import_module("opentelemetry.instrumentation.httpx")

    def wrap(inner: Any, asynchronous: bool) -> Any:
        if asynchronous:
            return module.AsyncOpenTelemetryTransport(inner, tracer_provider=provider)
        return module.SyncOpenTelemetryTransport(inner, tracer_provider=provider)

    setup = Setup(wrap=wrap, flush=provider.force_flush)
    if down is None:
        setup.sink = SpanSink(provider, exporter, with_tokens=False)
    return setup


CONTENDERS: dict[str, Callable[[int | None], Setup]] = {
    "baseline": lambda down: Setup(records=False),
    "null-transport": lambda down: Setup(wrap=_null_transport, records=False),
    "ours-installed": lambda down: _ours(True, down),
    "ours-transport": lambda down: _ours(False, down),
    "ours-caller-only": _ours_caller_only,
    "caller-only-churned": lambda down: _churned(_ours_caller_only(down)),
    "baseline-churned": lambda down: _churned(Setup(records=False)),
    "revenium-sdk": _revenium_sdk,
    "openllmetry": _openllmetry,
    "openlit": _openlit,
    "otel-httpx": _otel_httpx,
}

# The distributions each contender is made of, for the versions line.
PACKAGES: dict[str, tuple[str, ...]] = {
    "ours-installed": ("revenium-ollama-transport",),
    "ours-transport": ("revenium-ollama-transport",),
    "revenium-sdk": ("revenium-python-sdk",),
    "openllmetry": ("opentelemetry-instrumentation-ollama", "opentelemetry-sdk"),
    "openlit": ("openlit", "opentelemetry-sdk"),
    "otel-httpx": ("opentelemetry-instrumentation-httpx", "opentelemetry-sdk"),
}


def installed_version(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


# --- the scenarios ----------------------------------------------------------------------


class Scenarios:
    """The calls every contender makes, over clients made the same way for all of them."""

    def __init__(self, setup: Setup) -> None:
        ollama: Any = importlib.import_module("ollama")
        wrap = setup.wrap or (lambda inner, asynchronous: inner)
        self.client = ollama.Client(host=OLLAMA_URL, transport=wrap(mock_transport(), False))
        self.async_client = ollama.AsyncClient(
            host=OLLAMA_URL, transport=wrap(mock_transport(), True)
        )
        self.loop = asyncio.new_event_loop()
        self.openai: Any = None
        try:
            openai: Any = importlib.import_module("openai")
            family = openai_family()
            http = importlib.import_module(family).Client(
                transport=wrap(mock_transport(family), False)
            )
            self.openai = openai.OpenAI(
                base_url=f"{OLLAMA_URL}/v1/", api_key="ollama", http_client=http
            )
        except Exception as exc:  # no openai SDK, or one this cannot drive
            setup.notes.append(f"no openai scenario: {type(exc).__name__}: {exc}")
        self.calls: dict[str, Callable[[], object]] = {
            "chat_small": lambda: self.client.chat(model=MODEL, messages=SMALL),
            "chat_2kb": lambda: self.client.chat(model=MODEL, messages=LARGE),
            "chat_stream": self.chat_stream,
            "embed": lambda: self.client.embed(model=EMBED_MODEL, input="hello"),
            "openai_stream": self.openai_stream,
            "async50": self.concurrent,
        }

    def chat_stream(self) -> None:
        for _ in self.client.chat(model=MODEL, messages=SMALL, stream=True):
            pass

    def openai_stream(self) -> None:
        stream = self.openai.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hi"}], stream=True
        )
        for _ in stream:
            pass

    def concurrent(self) -> None:
        async def calls() -> None:
            chat = self.async_client.chat
            await asyncio.gather(*(chat(model=MODEL, messages=SMALL) for _ in range(CONCURRENT)))

        self.loop.run_until_complete(calls())

    def timed(self, scenario: str, n: int) -> list[float]:
        call = self.calls[scenario]
        per = CONCURRENT if scenario == "async50" else 1
        clock = time.perf_counter_ns
        times: list[float] = []
        # One call untimed first: the batch follows other workers' turns, which left this
        # process's code and data out of the CPU caches, and the first call pays to bring
        # them back, more the more code a contender runs. The figures are of warm calls.
        call()
        for _ in range(n):
            start = clock()
            call()
            times.append((clock() - start) / 1000.0 / per)
        return times


def check(scenarios: Scenarios, setup: Setup, scenario: str) -> str:
    """One call of ``scenario``, then whether what the contender recorded is right."""
    records, (tokens_in, tokens_out) = EXPECTED[scenario]
    setup.sink.drain()
    scenarios.calls[scenario]()
    got = setup.sink.read(records, timeout=10.0)
    if got is None:
        return "no tokens" if setup.records else "-"
    if not got:
        return "no record"
    wrong = [(i, o) for i, o, _ in got if i != tokens_in or (o or 0) != tokens_out]
    notes = sorted({note for _, _, note in got if note})
    if len(got) != records:
        return f"{len(got)} records for {records} calls"
    if wrong:
        return f"wrong: in {wrong[0][0]}, out {wrong[0][1]} (Ollama: {tokens_in}, {tokens_out})"
    return "ok" + (f" (fake API would refuse: {notes[0]})" if notes else "")


# --- the modes ----------------------------------------------------------------------------


def serve(contender: str, out: Any) -> int:
    def send(message: dict[str, Any]) -> None:
        out.write(orjson.dumps(message) + b"\n")
        out.flush()

    try:
        setup = CONTENDERS[contender](None)
        scenarios = Scenarios(setup)
    except Exception as exc:
        send({"ready": False, "error": f"{type(exc).__name__}: {exc}"})
        return 1
    send({"ready": True, "notes": setup.notes, "blocked": blocked})
    cpu_started: dict[str, float] = {}  # scenario -> process CPU time before its first call
    calls: dict[str, int] = {}
    try:
        for line in sys.stdin:
            command = orjson.loads(line)
            op = command["op"]
            if op == "quit":
                break
            scenario = command["scenario"]
            if scenario == "openai_stream" and scenarios.openai is None:
                send({"error": "the openai SDK is not installed"})
            elif op == "run":
                n = int(command["n"])
                if command.get("warmup"):
                    scenarios.timed(scenario, n)
                    setup.flush()  # warm-up records delivered before the CPU clock starts
                    send({"us": []})
                    continue
                cpu_started.setdefault(scenario, time.process_time())
                calls[scenario] = calls.get(scenario, 0) + n * EXPECTED[scenario][0]
                times = scenarios.timed(scenario, n)
                # Untimed, before answering: what the batch left for background threads (and
                # collector processes) is done now, so that it never runs beside the next
                # worker's timed batch on this machine's few cores. The CPU column counts it.
                setup.flush()
                if isinstance(setup.sink, SpanSink):
                    setup.sink.exporter.clear()  # in-memory spans: not let to pile up
                send({"us": times})
            elif op == "cpu":
                setup.flush()  # what was collected, delivered / exported: its CPU counted
                spent = time.process_time() - cpu_started[scenario]
                send({"cpu_us": spent / max(1, calls[scenario]) * 1e6})
            elif op == "check":
                send({"check": check(scenarios, setup, scenario), "blocked": blocked})
    finally:
        setup.flush()
        for clean in setup.cleanup:
            clean()
    return 0


def import_time(contender: str, out: Any) -> int:
    """Milliseconds to import ollama and httpx; then to import and set up the contender
    beyond them (its collector a closed port: nothing is sent); then for the first chat
    call (over the mock), which pays for whatever was left to load on first use."""
    started = time.perf_counter()
    importlib.import_module("httpx")
    ollama: Any = importlib.import_module("ollama")
    base = time.perf_counter()
    if contender == "revenium-sdk":
        setup = _revenium_sdk(closed_port(), openai_too=False)  # its Ollama middleware only
    else:
        setup = CONTENDERS[contender](closed_port())
    done = time.perf_counter()
    wrap = setup.wrap or (lambda inner, asynchronous: inner)
    client = ollama.Client(host=OLLAMA_URL, transport=wrap(mock_transport(), False))
    first = time.perf_counter()
    client.chat(model=MODEL, messages=SMALL)
    called = time.perf_counter()
    line = {
        "base_ms": (base - started) * 1000,
        "contender_ms": (done - base) * 1000,
        "first_call_ms": (called - first) * 1000,
    }
    out.write(orjson.dumps(line) + b"\n")
    out.flush()
    os._exit(0)  # not waiting on a collector that can never deliver


def rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def memory(contender: str, calls: int, out: Any) -> int:
    """Resident memory while ``calls`` small chats are made with the collector down."""
    setup = CONTENDERS[contender](closed_port())
    scenarios = Scenarios(setup)
    chat = scenarios.calls["chat_small"]
    warm = min(1000, calls)
    for _ in range(warm):
        chat()
    gc.collect()
    samples = [(warm, rss_kib())]
    marks = sorted({m for m in (calls // 10, calls // 4, calls // 2, calls * 3 // 4) if m > warm})
    marks.append(calls)
    made = warm
    started = time.perf_counter()
    for mark in marks:
        for _ in range(mark - made):
            chat()
        made = mark
        samples.append((made, rss_kib()))
    elapsed = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    stats = {k: v for k, v in setup.stats().items() if v}
    line = {"samples": samples, "peak_kib": peak, "seconds": elapsed, "stats": stats}
    out.write(orjson.dumps(line) + b"\n")
    out.flush()
    os._exit(0)  # not waiting on a collector that can never deliver


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("contender", choices=list(CONTENDERS))
    parser.add_argument("--import-time", action="store_true")
    parser.add_argument("--memory", type=int, metavar="CALLS")
    args = parser.parse_args()
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # a contender's prints go to stderr, never into the answers
    sys.stdout = sys.stderr
    sys.addaudithook(_guard)
    if os.environ.get("BENCH_NO_GC"):  # a diagnostic: how much of a cost is collection
        gc.disable()
    if args.import_time:
        return import_time(args.contender, out)
    if args.memory:
        return memory(args.contender, args.memory, out)
    return serve(args.contender, out)


if __name__ == "__main__":
    sys.exit(main())
