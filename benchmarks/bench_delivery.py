"""Delivery throughput, and what delivery costs the caller, with the spool off and on.

Metered calls are made as fast as the ollama client can make them (over
``httpx.MockTransport``) while the delivery thread sends their records to the fake metering
API, running in another process and answering each request after ``--latency`` seconds.

1. Throughput: ``--records`` calls, then a wait until every record is stored there;
   records per second while the calls were made, after them, and overall.
2. Caller-side cost: rounds of ``--calls`` calls by an un-instrumented client (ollama as it
   is, metering uninstalled) and as many by a metered one (metering installed by the
   import), taking turns; microseconds per call, median over the rounds, and what metering
   adds. The metered calls pay for the caller's own path and for the delivery thread's share
   of the GIL while it delivers (and, with the spool on, writes ahead) their records, which
   at this pace it does all through the round; each round's records are delivered before
   the next round, untimed, so that the baseline runs beside no delivery.
3. Records that come alone: ``--lone`` calls, each followed by a pause longer than the
   delivery thread's linger, as calls seconds apart are; the delivery thread's own CPU
   time per record (its clock, read with ``pthread_getcpuclockid``), which then pays every
   cost of a batch (its spool file, its wake-up, the loop's turns) for one record.
4. Full collections: ``--gc-calls`` calls by the un-instrumented client, then as many by
   the metered one, in bursts of 20 calls 10 ms apart (a pace delivery keeps up with):
   how many full collections of the garbage collector's oldest generation each run
   caused, and the milliseconds they took. Objects that live long enough (a record
   waiting for the API's answer) are moved into that generation, and enough of them
   trigger a full collection, which walks every object of the process, in whichever
   thread allocates at that moment.

    python benchmarks/bench_delivery.py [--records N] [--latency S] [--rounds N] [--calls N]
                                        [--lone N] [--gc-calls N]
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import ollama
from _metering_api import MeteringAPIProcess
from _ollama_mock import SMALL, mock_transport
from bench_transport import Methods

import revenium_ollama_transport as metering
from revenium_ollama_transport._delivery import THREAD_NAME


@dataclass(frozen=True)
class Throughput:
    calls_per_s: float
    during_per_s: float  # records delivered per second while the calls were made
    after_per_s: float  # ... once they were made, the caller idle
    overall_per_s: float
    stored: int


def throughput(call: Callable[[], object], records: int, api: MeteringAPIProcess) -> Throughput:
    before = api.count()
    delivered = int(metering.stats().get("delivered", 0))
    started = time.perf_counter()
    for _ in range(records):
        call()
    called = time.perf_counter() - started
    during = int(metering.stats().get("delivered", 0)) - delivered
    assert metering.flush(300.0), "records still undelivered after 300 s"
    finished = time.perf_counter() - started
    return Throughput(
        calls_per_s=records / called,
        during_per_s=during / called,
        after_per_s=(records - during) / (finished - called),
        overall_per_s=records / finished,
        stored=api.count() - before,
    )


def caller_cost(
    baseline: Callable[[], object], metered: Callable[[], object], rounds: int, calls: int
) -> tuple[float, float]:
    """Median microseconds per call over ``rounds`` of ``calls``: (baseline, metered)."""
    per_call: dict[str, list[float]] = {"baseline": [], "metered": []}
    for _ in range(20):  # warm-up
        baseline()
        metered()
    gc.collect()
    for index in range(rounds):
        # Taking turns, first one then the other, so that neither always follows the same.
        order = [("baseline", baseline), ("metered", metered)]
        for who, call in order if index % 2 else order[::-1]:
            started = time.perf_counter_ns()
            for _ in range(calls):
                call()
            per_call[who].append((time.perf_counter_ns() - started) / calls / 1000)
            # Untimed: the baseline never runs beside the delivery of earlier records.
            assert metering.flush(300.0), "records still undelivered after 300 s"
    return statistics.median(per_call["baseline"]), statistics.median(per_call["metered"])


def lone_record_cpu(call: Callable[[], object], count: int) -> float | None:
    """Microseconds of the delivery thread's CPU per record when each record is a batch of
    its own; None where a thread's CPU clock cannot be read."""
    call()  # the thread running, and its first wake-up out of the count
    assert metering.flush(300.0), "records still undelivered after 300 s"
    thread = next((t for t in threading.enumerate() if t.name == THREAD_NAME), None)
    if thread is None or thread.ident is None or not hasattr(time, "pthread_getcpuclockid"):
        return None
    clock = time.pthread_getcpuclockid(thread.ident)
    started = time.clock_gettime(clock)
    for _ in range(count):
        call()
        time.sleep(0.05)  # the workload: longer than the 20 ms linger, so one record a batch
    assert metering.flush(300.0), "records still undelivered after 300 s"
    return (time.clock_gettime(clock) - started) / count * 1e6


def full_collections(call: Callable[[], object], calls: int) -> tuple[int, float]:
    """Full collections during ``calls`` calls in bursts of 20, 10 ms apart, and the
    milliseconds they took, records delivered included."""
    took: list[float] = []
    started = 0.0

    def watch(phase: str, info: dict[str, int]) -> None:
        nonlocal started
        if info["generation"] == 2:
            if phase == "start":
                started = time.perf_counter()
            else:
                took.append(time.perf_counter() - started)

    assert metering.flush(300.0), "records still undelivered after 300 s"
    gc.collect()
    gc.callbacks.append(watch)
    try:
        for index in range(calls):
            call()
            if index % 20 == 19:
                time.sleep(0.01)  # the workload's pace
        assert metering.flush(300.0), "records still undelivered after 300 s"
    finally:
        gc.callbacks.remove(watch)
    return len(took), sum(took) * 1000


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--records", type=int, default=10_000)
    parser.add_argument("--latency", type=float, default=0.020)
    parser.add_argument("--rounds", type=int, default=40, help="rounds of the caller-side cost")
    parser.add_argument("--calls", type=int, default=250, help="calls per round and client")
    parser.add_argument("--lone", type=int, default=200, help="calls whose records go alone")
    parser.add_argument("--gc-calls", type=int, default=20_000, help="calls per client, part 4")
    args = parser.parse_args()

    mock = mock_transport()
    metering.uninstall()
    plain = Methods()  # ollama's own methods, taken while metering is not installed
    unmetered = ollama.Client(host="http://ollama.bench", transport=mock)
    metering.install()
    installed = ollama.Client(host="http://ollama.bench", transport=mock)

    def baseline() -> object:
        return plain.chat(unmetered, model="qwen2.5:0.5b", messages=SMALL)

    def metered() -> object:
        return installed.chat(model="qwen2.5:0.5b", messages=SMALL)

    api = MeteringAPIProcess(args.latency)
    results: dict[str, tuple[Throughput, float, float]] = {}
    lone: dict[str, float | None] = {}
    try:
        # A queue deep enough that no record is dropped while the calls outpace delivery.
        metering.configure(api_key="hak_bench", base_url=api.url, queue_size=1_000_000)
        in_flight = metering._config.current().max_in_flight
        with tempfile.TemporaryDirectory(prefix="bench-delivery-spool-") as spool_dir:
            for spool in ("off", "on"):
                metering.configure(spool_dir="off" if spool == "off" else spool_dir)
                flow = throughput(metered, args.records, api)
                base, cost = caller_cost(baseline, metered, args.rounds, args.calls)
                assert metering.flush(300.0), "records still undelivered after 300 s"
                results[spool] = (flow, base, cost)
                lone[spool] = lone_record_cpu(metered, args.lone)
            collections = {  # spool on, as by default
                "without metering": full_collections(baseline, args.gc_calls),
                "with metering": full_collections(metered, args.gc_calls),
            }
    finally:
        api.close()

    print(
        f"metering API answering after {args.latency * 1000:.0f} ms, {in_flight} requests in "
        f"flight at most; {os.cpu_count()} cores"
    )
    print(f"\nthroughput, {args.records} calls as fast as they come, records per second:")
    print(f"{'spool':<6} {'calls/s':>8} {'during':>8} {'after':>8} {'overall':>8} {'stored':>7}")
    for spool, (flow, _, _) in results.items():
        print(
            f"{spool:<6} {flow.calls_per_s:8.0f} {flow.during_per_s:8.0f} "
            f"{flow.after_per_s:8.0f} {flow.overall_per_s:8.0f} {flow.stored:7d}"
        )
    print(
        f"\ncaller-side cost, microseconds per small chat call, median of {args.rounds} "
        f"rounds of {args.calls} calls per client:"
    )
    print(f"{'spool':<6} {'baseline':>9} {'metered':>9} {'added':>8}")
    for spool, (_, base, cost) in results.items():
        print(f"{spool:<6} {base:9.1f} {cost:9.1f} {cost - base:+8.1f}")
    print(
        f"\nrecords that come alone ({args.lone} calls, 50 ms apart), the delivery thread's "
        "CPU per record, microseconds:"
    )
    for spool, cpu in lone.items():
        print(f"spool {spool:<4} {'n/a' if cpu is None else f'{cpu:.0f}'}")
    print(
        f"\nfull collections of the garbage collector's oldest generation, {args.gc_calls} "
        "calls in bursts of 20, 10 ms apart (spool on):"
    )
    for who, (count, took) in collections.items():
        print(f"{who:<17} {count:3d} ({took:.0f} ms)")
    stored_all = all(flow.stored == args.records for flow, _, _ in results.values())
    return 0 if stored_all else 1


if __name__ == "__main__":
    sys.exit(main())
