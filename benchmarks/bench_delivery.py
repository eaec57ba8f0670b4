"""Delivery throughput: records per second to a metering API that takes 20 ms to answer.

Metered calls are made as fast as the ollama client can make them (over
``httpx.MockTransport``) while the delivery thread sends their records to the fake metering
API, running in another process and answering each request after ``--latency`` seconds;
then it waits until every record is stored there.

    python benchmarks/bench_delivery.py [--records N] [--latency S]
"""

from __future__ import annotations

import argparse
import sys
import time

import ollama
from _metering_api import MeteringAPIProcess
from _ollama_mock import SMALL, mock_transport

import revenium_ollama_transport as metering
from revenium_ollama_transport import ReveniumTransport


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--records", type=int, default=10_000)
    parser.add_argument("--latency", type=float, default=0.020)
    args = parser.parse_args()
    with MeteringAPIProcess(args.latency) as api:
        metering.configure(api_key="hak_bench", base_url=api.url, queue_size=1_000_000)
        in_flight = metering._config.current().max_in_flight
        client = ollama.Client(
            host="http://ollama.bench",
            transport=ReveniumTransport(mock_transport()),
        )
        started = time.perf_counter()
        for _ in range(args.records):
            client.chat(model="qwen2.5:0.5b", messages=SMALL)
        called = time.perf_counter() - started
        during = int(metering.stats().get("delivered", 0))
        assert metering.flush(300.0), "records still undelivered after 300 s"
        delivered = time.perf_counter() - started
        stored = api.count()
    stats = metering.stats()
    print(
        f"{args.records} records, metering API answering after {args.latency * 1000:.0f} ms, "
        f"{in_flight} requests in flight at most"
    )
    print(
        f"calls made in {called:.2f} s ({args.records / called:.0f} calls/s), "
        f"{during} records delivered meanwhile ({during / called:.0f}/s)"
    )
    drain = delivered - called
    print(
        f"the other {args.records - during} delivered in the {drain:.2f} s after the calls: "
        f"{(args.records - during) / drain:.0f} records/s with the caller idle"
    )
    print(
        f"all delivered {delivered:.2f} s after the first call: "
        f"{args.records / delivered:.0f} records/s sustained "
        f"(stored by the API: {stored}; delivered {stats.get('delivered', 0)}, "
        f"retried {stats.get('retried', 0)})"
    )
    return 0 if stored == args.records else 1


if __name__ == "__main__":
    sys.exit(main())
