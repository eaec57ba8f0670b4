"""Per-call and per-chunk cost of the metering transport, side by side with no transport.

All clients talk to the same in-process ``httpx.MockTransport`` answering as Ollama does,
so the figures are the cost of the Python code on the call's path: the ollama client and
httpx in the baseline, plus ours in the metered run. Calls alternate between the two
clients, so both see the same machine state. Records are built and delivered for real
during the run, by our background thread, to the fake metering API running in another
process on loopback (in this process its server threads would compete for the GIL).
Last, small chats in short batches with the CPU caches emptied before each: what a call
costs when other work ran in between, as it does between compare.py's batches.

    python benchmarks/bench_transport.py [--rounds N]
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from importlib.metadata import version
from typing import Any

import httpx2
import ollama
import openai
from _metering_api import MeteringAPIProcess
from _ollama_mock import LARGE, SMALL, STREAM_CHUNKS, median, mock_transport, p95

import revenium_ollama_transport as metering
from revenium_ollama_transport import ReveniumTransport


class Methods:
    """The client methods a scenario calls: ollama's own, or the installed wrappers."""

    def __init__(self) -> None:
        cls = ollama.Client
        self.chat: Callable[..., Any] = cls.chat
        self.embed: Callable[..., Any] = cls.embed


def scenarios(client: ollama.Client, methods: Methods) -> dict[str, Callable[[], object]]:
    chat, embed = methods.chat, methods.embed

    def stream() -> None:
        for _ in chat(client, model="qwen2.5:0.5b", messages=SMALL, stream=True):
            pass

    return {
        "chat, small prompt": lambda: chat(client, model="qwen2.5:0.5b", messages=SMALL),
        "chat, 2 KB prompt": lambda: chat(client, model="qwen2.5:0.5b", messages=LARGE),
        f"chat streamed, {STREAM_CHUNKS} chunks": stream,
        "embed, 384 dims": lambda: embed(client, model="all-minilm", input="hello"),
    }


def openai_client(http: httpx2.Client) -> openai.OpenAI:
    return openai.OpenAI(base_url="http://ollama.bench/v1/", api_key="ollama", http_client=http)


def openai_scenario(client: openai.OpenAI) -> dict[str, Callable[[], object]]:
    http: Any = client._client
    body = {"model": "qwen2.5:0.5b", "messages": [], "stream": True}

    def stream() -> None:
        for _ in client.chat.completions.create(
            model="qwen2.5:0.5b", messages=[{"role": "user", "content": "hi"}], stream=True
        ):
            pass

    def raw() -> None:
        # The same stream read as bytes: our cost without the SDK's (much larger) own.
        with http.stream("POST", "http://ollama.bench/v1/chat/completions", json=body) as r:
            for _ in r.iter_raw():
                pass

    return {
        f"/v1 SSE bytes, {STREAM_CHUNKS} chunks": raw,
        f"openai SDK stream, {STREAM_CHUNKS}": stream,
    }


def timed(call: Callable[[], object]) -> float:
    start = time.perf_counter_ns()
    call()
    return (time.perf_counter_ns() - start) / 1000.0


# Larger than the last-level cache of the machines this runs on: writing a byte in each of
# its 64-byte lines leaves the CPU caches holding nothing of the calls, as another
# process's turn on the core does (compare.py's batches each follow other processes').
EVICT_BYTES = 64 * 1024 * 1024
COLD_BATCH = 20


def cold_lines(calls: list[tuple[str, Callable[[], object]]], batches: int) -> list[str]:
    """Small chats in batches of ``COLD_BATCH``, the caches evicted before each batch:
    the first call of a batch, and the others (the calls compare.py times: it leaves each
    batch's first call untimed)."""
    buffer = bytearray(EVICT_BYTES)
    stamp = bytes(EVICT_BYTES // 64)  # a byte for each line
    first: dict[str, list[float]] = {who: [] for who, _ in calls}
    others: dict[str, list[float]] = {who: [] for who, _ in calls}
    for batch in range(batches):
        turn = batch % len(calls)
        for who, call in calls[turn:] + calls[:turn]:
            buffer[::64] = stamp
            times = [timed(call) for _ in range(COLD_BATCH)]
            first[who].append(times[0])
            others[who] += times[1:]
    lines = []
    for label, figures in (("first call of a batch", first), ("the other calls", others)):
        base = median(figures["baseline"])
        line = f"  {label}: baseline {base:.1f}"
        for who in ("transport", "installed"):
            mid = median(figures[who])
            line += f"; {who} {mid:.1f} ({mid - base:+.2f}, {mid / base:.3f})"
        lines.append(line)
    return lines


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=4000, help="calls per scenario and client")
    args = parser.parse_args()

    # Three clients over the same mock: ollama as it is; an explicit ReveniumTransport; and
    # metering installed by the import (transport wrapped in place, and the wrapper that
    # takes usage_metadata= and tags responses with their transaction id).
    mock = mock_transport("httpx")
    sse_mock = mock_transport("httpx2")
    metering.uninstall()
    plain_methods = Methods()
    baseline = ollama.Client(host="http://ollama.bench", transport=mock)
    transport = ollama.Client(host="http://ollama.bench", transport=ReveniumTransport(mock))
    openai_baseline = openai_client(httpx2.Client(transport=sse_mock))
    openai_transport = openai_client(httpx2.Client(transport=ReveniumTransport(sse_mock)))
    metering.install()
    installed = ollama.Client(host="http://ollama.bench", transport=mock)
    openai_installed = openai_client(httpx2.Client(transport=sse_mock))
    contenders = {
        "baseline": scenarios(baseline, plain_methods) | openai_scenario(openai_baseline),
        "transport": scenarios(transport, plain_methods) | openai_scenario(openai_transport),
        "installed": scenarios(installed, Methods()) | openai_scenario(openai_installed),
    }

    print(
        f"python {platform.python_version()} on {platform.machine()}, {os.cpu_count()} cores; "
        f"ollama {version('ollama')}, httpx {version('httpx')}, "
        f"revenium-ollama-transport {metering.__version__}"
    )
    print(
        f"medians of {args.rounds} calls per scenario and client ({args.rounds // 6} streamed), "
        "the clients taking turns in a rotating order; microseconds; (+added, ratio to baseline)\n"
    )
    header = (
        f"{'scenario':<26} {'baseline':>9} {'p95':>7} | {'transport':>9} {'added':>7}"
        f" {'ratio':>6} {'p95':>7} | {'installed':>9} {'added':>7} {'ratio':>6} {'p95':>7}"
    )
    print(header)
    print("-" * len(header))
    with MeteringAPIProcess() as api:
        # A queue deep enough that no record is dropped while the calls outpace delivery.
        metering.configure(
            api_key="hak_bench",
            base_url=api.url,
            queue_size=1_000_000,
            # The spool on, as by default, but a private one: never the user's.
            spool_dir=tempfile.mkdtemp(prefix="bench-transport-spool-"),
        )
        per_chunk: list[str] = []
        for name in contenders["baseline"]:
            calls = [(who, runs[name]) for who, runs in contenders.items()]
            rounds = args.rounds
            if "stream" in name or "SSE" in name:
                rounds = max(50, args.rounds // (60 if "SDK" in name else 6))
            for _ in range(min(200, rounds)):  # warm-up
                for _, call in calls:
                    call()
            gc.collect()
            times: dict[str, list[float]] = {who: [] for who, _ in calls}
            for round_number in range(rounds):
                # The order rotates: no client always runs right after the same other one.
                turn = round_number % len(calls)
                for who, call in calls[turn:] + calls[:turn]:
                    times[who].append(timed(call))
            base = median(times["baseline"])
            line = f"{name:<26} {base:9.1f} {p95(times['baseline']):7.1f}"
            for who in ("transport", "installed"):
                mid = median(times[who])
                line += f" | {mid:9.1f} {mid - base:+7.2f} {mid / base:6.3f} {p95(times[who]):7.1f}"
                if "stream" in name or "SSE" in name:
                    per_chunk.append(
                        f"{name.split(',')[0]}, {who} {(mid - base) / STREAM_CHUNKS:.3f} us"
                    )
            print(line)
        print("\nadded per streamed chunk (call overhead included): " + "; ".join(per_chunk))
        batches = max(10, args.rounds // 40)
        print(
            f"\nsmall chat, caches evicted ({EVICT_BYTES >> 20} MiB written) before each of "
            f"{batches} batches of {COLD_BATCH} calls per client; medians, us (+added, ratio):"
        )
        small = [(who, runs["chat, small prompt"]) for who, runs in contenders.items()]
        print("\n".join(cold_lines(small, batches)))
        delivered = metering.flush(60.0)
        # Whole-process CPU (all threads, kernel included) for the same calls with and
        # without metering, the metered ones until their records are delivered: what the
        # delivery thread costs in the background.
        count = max(500, args.rounds // 3)
        cpu: dict[str, float] = {}
        for who in ("baseline", "transport"):
            call = contenders[who]["chat, small prompt"]
            started = time.process_time()
            for _ in range(count):
                call()
            delivered = metering.flush(60.0) and delivered
            cpu[who] = (time.process_time() - started) / count * 1e6
        print(
            f"process CPU per small chat call: {cpu['baseline']:.1f} us without, "
            f"{cpu['transport']:.1f} us with metering, records delivered "
            f"({cpu['transport'] - cpu['baseline']:.1f} us per record, caller and delivery)"
        )
        stats = metering.stats()
        stored = api.count()
        print(
            f"records delivered to the fake metering API during the run: "
            f"{stats.get('delivered', 0)} of {stats.get('recorded', 0)} "
            f"({'all' if delivered else 'NOT all'} flushed); stored there: {stored}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
