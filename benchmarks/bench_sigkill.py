"""What SIGKILL costs with the spool on: records lost, and the window they ended in.

A caller process (``tests/_caller.py``: the real ollama client, metered by the import)
calls the Ollama simulator at a steady rate, or flat out, while its records go to a fake
metering API answering after ``--latency`` seconds, or never (hanging: then only what was
written ahead to the spool can survive). The caller is SIGKILLed 1-3 s into its calls, and
a new process with the same spool delivers what the first one left. Lost: calls the killed
process had returned from whose records never reached the API. The window: how long before
the kill the oldest lost call had returned (every call that returned earlier was kept);
and lost calls / call rate.

    python benchmarks/bench_sigkill.py [--kills N] [--latency S] [--only TEXT]
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

# The caller process is the tests' own (tests/_caller.py).
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from revenium_ollama_transport.testing import FakeMeteringAPI, OllamaSimulator
from tests._caller import Caller, Loss, loss, read_log, requests_per_id

API_KEY = "hak_bench"


@dataclass(frozen=True)
class Scenario:
    rate: float  # calls per second; 0: flat out
    in_process: bool  # the caller's answers replayed in-process (see tests/_caller.py)
    hanging: bool  # the API never answers while the caller runs

    def __str__(self) -> str:
        rate = f"{self.rate:g}/s" if self.rate else "flat out"
        where = "in-process" if self.in_process else "HTTP"
        return f"{'hanging' if self.hanging else 'answering'} API, {rate}, {where}"


SCENARIOS = [
    Scenario(100, in_process=False, hanging=False),
    Scenario(1000, in_process=False, hanging=False),
    Scenario(0, in_process=False, hanging=False),
    Scenario(0, in_process=True, hanging=False),
    Scenario(100, in_process=False, hanging=True),
    Scenario(0, in_process=True, hanging=True),
]


def one_kill(
    directory: Path,
    sim: OllamaSimulator,
    api: FakeMeteringAPI,
    scenario: Scenario,
    after: float,
) -> tuple[Loss, int]:
    """Kills a caller ``after`` seconds into its calls; returns the loss and how many
    records the API was sent more than once (stored once, by their idempotency key)."""
    api.clear()
    api.set_mode("hang" if scenario.hanging else "normal")
    env = {
        "REVENIUM_METERING_API_KEY": API_KEY,
        "REVENIUM_METERING_BASE_URL": api.url,
        "REVENIUM_SPOOL_DIR": str(directory / "spool"),
    }
    with Caller(
        directory, sim.url, env, rate=scenario.rate, in_process=scenario.in_process, name="killed"
    ) as killed:
        log = killed.wait_for_calls(20, timeout=60.0)  # started, metering running
        while time.time() < log.calls[0].ended + after:
            time.sleep(0.005)
        killed_at = time.time()
        killed.send_signal(signal.SIGKILL)
        assert killed.wait(30) == -signal.SIGKILL
    api.set_mode("normal")
    with Caller(directory, sim.url, env, calls=0, drain=True, name="drainer") as drainer:
        assert drainer.wait(300) == 0, drainer.errors
    stored = [r["transactionId"] for r in api.records]
    resent = sum(1 for count in requests_per_id(api.received).values() if count > 1)
    return loss(read_log(killed.log), stored, killed_at), resent


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--kills", type=int, default=5, help="kills per scenario")
    parser.add_argument("--latency", type=float, default=0.020)
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--only", default="", help="the scenarios whose name has this text")
    args = parser.parse_args()
    draw = random.Random(args.seed)
    print(
        f"metering API answering after {args.latency * 1000:.0f} ms, or hanging; each caller "
        f"is killed {args.kills} times, 1-3 s into its calls; {os.cpu_count()} cores"
    )
    print(
        f"{'':<40} {'made/s':>7} {'calls':>6} {'lost':>5} {'lost/rate ms':>12} "
        f"{'window ms':>9} {'resent':>6}"
    )
    with (
        OllamaSimulator() as sim,
        FakeMeteringAPI() as api,
        tempfile.TemporaryDirectory(prefix="bench-sigkill-") as scratch,
    ):
        api.latency = args.latency
        for number, scenario in enumerate(SCENARIOS):
            if args.only not in str(scenario):
                continue
            losses = []
            for index in range(args.kills):
                directory = Path(scratch) / f"{number}-{index}"
                kill, resent = one_kill(directory, sim, api, scenario, draw.uniform(1.0, 3.0))
                losses.append(kill)
                print(
                    f"{scenario!s:<40} {kill.rate:7.0f} {kill.calls:6d} {len(kill.lost):5d} "
                    f"{len(kill.lost) / kill.rate * 1000:12.1f} {kill.window * 1000:9.1f} "
                    f"{resent:6d}",
                    flush=True,
                )
            worst = max(losses, key=lambda k: k.window)
            print(
                f"{'':<40} median: {statistics.median(len(k.lost) for k in losses):.0f} lost, "
                f"window {statistics.median(k.window for k in losses) * 1000:.1f} ms; "
                f"worst {worst.window * 1000:.1f} ms ({len(worst.lost)} records)"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
