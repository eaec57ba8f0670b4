"""What metering or observing an Ollama call costs, side by side with the alternatives.

Every contender runs in a worker process of its own (``compare_worker.py``: they all
patch globally), over the same in-process mock of Ollama. The workers take turns, one
batch of calls each per round, in an order that rotates every round, so that whatever the
machine does meanwhile falls on all of them alike; only one runs at a time. Figures are
medians and 95th percentiles over every call, and the ratio to the un-instrumented
baseline measured in the same run. Then, once per contender in fresh processes: import
time, and resident memory over many calls with the contender's collector unreachable.

    python benchmarks/compare.py [--rounds N] [--memory-calls N] [--only a,b]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import IO, Any

import orjson
from _ollama_mock import STREAM_CHUNKS, median, p95

WORKER = Path(__file__).resolve().parent / "compare_worker.py"


@dataclass(frozen=True)
class Contender:
    name: str
    label: str
    packages: tuple[str, ...] = ()
    import_time: bool = True
    default: bool = True  # False: run only when named by --only


CONTENDERS = [
    Contender("baseline", "ollama alone (baseline)"),
    Contender("null-transport", "do-nothing httpx transport", import_time=False),
    Contender(
        "ours-installed", "revenium-ollama-transport, installed", ("revenium-ollama-transport",)
    ),
    Contender(
        "ours-transport",
        "revenium-ollama-transport, explicit transport",
        ("revenium-ollama-transport",),
        import_time=False,  # the same import as installed
    ),
    Contender(
        "ours-caller-only",
        "revenium-ollama-transport, records discarded",
        ("revenium-ollama-transport",),
        import_time=False,
        default=False,  # a diagnostic: the caller's path without the delivery thread's work
    ),
    # Diagnostics: what making and freeing objects between batches, as delivery does, costs
    # the calls after it, with nothing delivered (see compare_worker._churn).
    Contender(
        "caller-only-churned",
        "records discarded, objects churned",
        ("revenium-ollama-transport",),
        import_time=False,
        default=False,
    ),
    Contender(
        "baseline-churned",
        "ollama alone, objects churned",
        import_time=False,
        default=False,
    ),
    Contender("revenium-sdk", "revenium-python-sdk (Ollama middleware)", ("revenium-python-sdk",)),
    Contender(
        "openllmetry",
        "OpenLLMetry: opentelemetry-instrumentation-ollama",
        ("opentelemetry-instrumentation-ollama", "opentelemetry-sdk"),
    ),
    Contender("openlit", "openlit", ("openlit", "opentelemetry-sdk")),
    Contender(
        "otel-httpx",
        "OpenTelemetry httpx transport",
        ("opentelemetry-instrumentation-httpx", "opentelemetry-sdk"),
    ),
]
OURS = ("ours-installed", "ours-transport")


@dataclass(frozen=True)
class Scenario:
    name: str
    label: str
    batch: int  # calls per worker per round
    chunks: int = 0  # > 0: a stream of this many chunks, its cost also shown per chunk


SCENARIOS = [
    Scenario("chat_small", "chat, small prompt (us per call)", 20),
    Scenario("chat_2kb", "chat, 2 KB prompt (us per call)", 20),
    Scenario(
        "chat_stream", f"chat streamed, {STREAM_CHUNKS} chunks (us per call)", 4, STREAM_CHUNKS
    ),
    Scenario("embed", "embed, one input (us per call)", 20),
    Scenario(
        "openai_stream",
        f"/v1/chat/completions streamed through the openai SDK, {STREAM_CHUNKS} chunks",
        2,
        STREAM_CHUNKS,
    ),
    Scenario("async50", "AsyncClient, 50 concurrent chats (us per call)", 2),
]

# Nothing a worker does may leave the machine; telemetry of the libraries themselves off.
# A worker's hash seed is its replica's number (see worker_environment).
WORKER_ENVIRONMENT = {
    "TRACELOOP_TELEMETRY": "false",
    "DO_NOT_TRACK": "1",
    "ANONYMIZED_TELEMETRY": "false",
    "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9",  # discard, should one be made
}


class Worker:
    """A contender's worker process, and what it answered."""

    def __init__(self, contender: Contender, logs: Path, replica: int = 0) -> None:
        self.contender = contender
        self.replica = replica
        self.log_path = logs / f"{contender.name}.{replica}.log"
        self._log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, str(WORKER), contender.name],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            env=worker_environment(replica),
        )
        self.error: str | None = None
        self.notes: list[str] = []
        self.blocked: list[str] = []
        hello = self._read()
        if hello is None or not hello.get("ready"):
            self.error = (hello or {}).get("error") or self._died()
        else:
            self.notes = hello.get("notes", [])
            self.blocked = hello.get("blocked", [])

    def _died(self) -> str:
        tail = self.log_path.read_text(errors="replace").strip().splitlines()[-3:]
        return "worker died: " + (" | ".join(tail) or "no output")

    def _read(self) -> dict[str, Any] | None:
        stdout: IO[bytes] | None = self.process.stdout
        assert stdout is not None
        line = stdout.readline()
        if not line:
            return None
        answer: dict[str, Any] = orjson.loads(line)
        return answer

    def ask(self, **command: Any) -> dict[str, Any]:
        stdin: IO[bytes] | None = self.process.stdin
        assert stdin is not None
        try:
            stdin.write(orjson.dumps(command) + b"\n")
            stdin.flush()
        except BrokenPipeError:
            return {"error": self._died()}
        answer = self._read()
        return answer if answer is not None else {"error": self._died()}

    def close(self) -> None:
        if self.process.poll() is None:
            with contextlib.suppress(BrokenPipeError, ValueError):
                self.ask(op="quit")
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()


def worker_environment(replica: int = 0) -> dict[str, str]:
    """The environment of a contender's worker number ``replica``, whose hash seed is
    its number: the seed lays out every dictionary and set of the process, and several
    seeds keep one layout from being a contender's luck in every run."""
    # The user's own Revenium settings must not reach the workers: each sets its own. Nor
    # PYTHONDONTWRITEBYTECODE: every contender from PyPI was compiled when pip installed
    # it, this package (installed editable) is compiled by the first, untimed import run;
    # without its .pyc every later run would time compiling it from source (30 ms, not 10).
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("REVENIUM_") and k != "PYTHONDONTWRITEBYTECODE"
    }
    return env | WORKER_ENVIRONMENT | {"PYTHONHASHSEED": str(replica)}


@dataclass
class Results:
    times: dict[tuple[str, str], list[float]] = field(default_factory=dict)
    checks: dict[tuple[str, str], str] = field(default_factory=dict)
    cpu: dict[tuple[str, str], list[float]] = field(default_factory=dict)
    errors: dict[tuple[str, str], str] = field(default_factory=dict)
    imports: dict[str, list[tuple[float, float, float]]] = field(default_factory=dict)
    memory: dict[str, dict[str, Any]] = field(default_factory=dict)


def run_scenarios(
    workers: list[Worker], scenarios: list[Scenario], rounds: int, warmup: int, results: Results
) -> None:
    for scenario in scenarios:
        live = [w for w in workers if w.error is None]
        if not live:
            continue
        for worker in live:
            answer = worker.ask(
                op="run", scenario=scenario.name, n=scenario.batch * warmup, warmup=True
            )
            if "error" in answer:
                results.errors[(worker.contender.name, scenario.name)] = answer["error"]
        for round_number in range(rounds):
            # A new order every round, shuffled rather than rotated: a rotation keeps every
            # worker behind the same one, whose work leaves the shared caches warm or cold
            # for it, round after round.
            order = live[:]
            random.Random(round_number).shuffle(order)
            for worker in order:
                key = (worker.contender.name, scenario.name)
                if key in results.errors:
                    continue
                answer = worker.ask(op="run", scenario=scenario.name, n=scenario.batch)
                if "error" in answer:
                    results.errors[key] = answer["error"]
                else:
                    results.times.setdefault(key, []).extend(answer["us"])
        for worker in live:
            key = (worker.contender.name, scenario.name)
            if key not in results.errors:
                answer = worker.ask(op="cpu", scenario=scenario.name)
                if "cpu_us" in answer:
                    results.cpu.setdefault(key, []).append(answer["cpu_us"])
            if key not in results.errors and worker.replica == 0:
                answer = worker.ask(op="check", scenario=scenario.name)
                results.checks[key] = answer.get("check") or answer.get("error", "?")
                worker.blocked = answer.get("blocked", worker.blocked)
        print(f"  {scenario.name}: done", file=sys.stderr, flush=True)


def run_once(contender: str, *args: str, timeout: float) -> dict[str, Any]:
    """A worker in one of its run-once modes; its answer, or the reason there is none."""
    try:
        done = subprocess.run(
            [sys.executable, str(WORKER), contender, *args],
            capture_output=True,
            env=worker_environment(),
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return {"error": f"no answer within {timeout:.0f} s"}
    lines = done.stdout.splitlines()
    if done.returncode != 0 or not lines:
        tail = done.stderr.decode(errors="replace").strip().splitlines()[-2:]
        return {"error": f"exit {done.returncode}: " + " | ".join(tail)}
    answer: dict[str, Any] = orjson.loads(lines[-1])
    return answer


def run_imports(contenders: list[Contender], repeats: int, results: Results) -> None:
    timed = [c for c in contenders if c.import_time]
    for contender in timed:  # compiled once, not timed: every later run finds the .pyc
        run_once(contender.name, "--import-time", timeout=120)
    for repeat in range(repeats):
        turn = repeat % len(timed)
        for contender in timed[turn:] + timed[:turn]:
            answer = run_once(contender.name, "--import-time", timeout=120)
            if "error" not in answer:
                results.imports.setdefault(contender.name, []).append(
                    (answer["base_ms"], answer["contender_ms"], answer["first_call_ms"])
                )
    print("  import times: done", file=sys.stderr, flush=True)


def run_memory(contenders: list[Contender], calls: int, results: Results) -> None:
    for contender in contenders:
        if contender.name == "null-transport":
            continue
        results.memory[contender.name] = run_once(
            contender.name, "--memory", str(calls), timeout=max(600.0, calls / 50)
        )
        print(f"  memory, {contender.name}: done", file=sys.stderr, flush=True)


# --- the table -------------------------------------------------------------------------


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def installed(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "not installed"


def machine_lines() -> list[str]:
    common = ["ollama", "httpx", "httpx2", "openai", "pydantic"]
    theirs = [
        "revenium-ollama-transport",
        "revenium-python-sdk",
        "opentelemetry-api",
        "opentelemetry-sdk",
        "opentelemetry-instrumentation-ollama",
        "opentelemetry-instrumentation-httpx",
        "openlit",
    ]
    try:
        load = os.getloadavg()[0]
    except OSError:
        load = float("nan")
    return [
        f"machine: {cpu_model()}, {os.cpu_count()} cores, {platform.system()} "
        f"{platform.machine()}; Python {platform.python_version()}; "
        f"load average {load:.2f} at the start",
        "clients: " + ", ".join(f"{n} {installed(n)}" for n in common),
        "contenders: " + ", ".join(f"{n} {installed(n)}" for n in theirs),
    ]


def scenario_block(scenario: Scenario, workers: list[Worker], results: Results) -> list[str]:
    base_times = results.times.get(("baseline", scenario.name))
    base = median(base_times) if base_times else None
    per_chunk = scenario.chunks > 0
    header = (
        f"  {'contender':<46} {'median':>9} {'p95':>9} {'added':>8} {'ratio':>6}"
        + (f" {'/chunk':>7}" if per_chunk else "")
        + f" {'CPU':>8}  tokens recorded"
    )
    lines = [scenario.label, header]
    for worker in workers:
        name = worker.contender.name
        key = (name, scenario.name)
        label = f"  {worker.contender.label:<46}"
        if worker.error is not None:
            lines.append(f"{label} not available: {worker.error}")
            continue
        if key in results.errors:
            lines.append(f"{label} failed: {results.errors[key]}")
            continue
        check = results.checks.get(key, "?")
        if check == "no record":
            lines.append(f"{label} {'no record':>9}")
            continue
        times = results.times[key]
        cpu = results.cpu.get(key)
        cpu_text = f" {sum(cpu) / len(cpu):8.1f}" if cpu else f" {'?':>8}"
        m = median(times)
        row = f"{label} {m:9.1f} {p95(times):9.1f}"
        if base is None or name == "baseline":
            row += f" {'':>8} {'':>6}" + (f" {'':>7}" if per_chunk else "")
        else:
            row += f" {m - base:+8.2f} {m / base:6.3f}"
            if per_chunk:
                row += f" {(m - base) / scenario.chunks:+7.3f}"
        lines.append(f"{row}{cpu_text}  {check}")
    return lines


def added(results: Results, name: str, scenario: str) -> tuple[float, float] | None:
    mine, base = results.times.get((name, scenario)), results.times.get(("baseline", scenario))
    if not mine or not base or results.checks.get((name, scenario)) == "no record":
        return None
    return median(mine) - median(base), median(mine) / median(base)


def import_lines(contenders: list[Contender], results: Results) -> list[str]:
    lines = [
        "import and set-up, fresh process each time (ms; median of the runs): importing ollama"
        " and httpx; then the contender's import and set-up beyond them; then the first chat",
        f"  {'contender':<46} {'ollama+httpx':>12} {'contender':>10} {'p95':>8} {'1st call':>9}",
    ]
    for contender in contenders:
        runs = results.imports.get(contender.name)
        if not contender.import_time:
            continue
        label = f"  {contender.label:<46}"
        if not runs:
            lines.append(f"{label} failed")
            continue
        base = [b for b, _, _ in runs]
        own = [c for _, c, _ in runs]
        first = [f for _, _, f in runs]
        lines.append(
            f"{label} {median(base):12.1f} {median(own):10.1f} {p95(own):8.1f} {median(first):9.1f}"
        )
    return lines


def memory_lines(contenders: list[Contender], calls: int, results: Results) -> list[str]:
    lines = [
        f"resident memory (MiB) over {calls:,} small chats with the collector unreachable "
        "(a closed port on 127.0.0.1)",
    ]
    header_done = False
    for contender in contenders:
        found = results.memory.get(contender.name)
        if found is None:
            continue
        label = f"  {contender.label:<46}"
        if "error" in found:
            lines.append(f"{label} failed: {found['error']}")
            continue
        samples: list[list[int]] = found["samples"]
        if not header_done:
            marks = "".join(f" {f'@{n / 1000:g}k':>7}" for n, _ in samples)
            lines.append(f"  {'contender':<46}{marks} {'peak':>7}  bytes/call, 2nd half")
            header_done = True
        values = "".join(f" {kib / 1024:7.1f}" for _, kib in samples)
        half = next((s for s in samples if s[0] >= calls // 2), samples[0])
        last = samples[-1]
        slope = (last[1] - half[1]) * 1024 / max(1, last[0] - half[0])
        stats = found.get("stats", {})
        note = ""
        if stats:
            shown = {k: v for k, v in stats.items() if k in ("queued", "dropped.queue_full")}
            note = "  " + ", ".join(f"{k} {v:,.0f}" for k, v in shown.items())
        lines.append(f"{label}{values} {found['peak_kib'] / 1024:7.1f}  {slope:+8.1f}{note}")
    return lines


def target_lines(results: Results, calls: int) -> list[str]:
    lines = ["targets for revenium-ollama-transport (medians of this run)"]
    for name in OURS:
        how = "installed" if name == "ours-installed" else "explicit transport"
        for scenario in ("chat_small", "chat_2kb", "embed"):
            got = added(results, name, scenario)
            if got is None:
                continue
            met = got[0] <= 10.0 and got[1] <= 1.06
            lines.append(
                f"  {how}, {scenario}: {got[0]:+.2f} us, ratio {got[1]:.3f} "
                f"(target <= 10 us and <= 1.06): {'met' if met else 'MISSED'}"
            )
        got = added(results, name, "chat_stream")
        if got is not None:
            chunk = got[0] / STREAM_CHUNKS
            lines.append(
                f"  {how}, chat streamed: {chunk:+.3f} us per chunk, call included "
                f"(target <= 0.5 us): {'met' if chunk <= 0.5 else 'MISSED'}"
            )
    runs = results.imports.get("ours-installed")
    if runs:
        own = median([c for _, c, _ in runs])
        lines.append(
            f"  import: {own:.1f} ms beyond ollama and httpx (target <= 30 ms): "
            f"{'met' if own <= 30 else 'MISSED'}"
        )
    found = results.memory.get("ours-installed")
    if found and "samples" in found:
        samples = found["samples"]
        # By half-way the queue (10,000 records) is long full: from there on, a bounded
        # memory stays flat, while one growing with the calls would add ~1.5 KB a call.
        half = next((s for s in samples if s[0] >= calls // 2), samples[0])
        grown = (samples[-1][1] - half[1]) / 1024
        per_call = grown * 1024 * 1024 / max(1, samples[-1][0] - half[0])
        bounded = per_call <= 64
        lines.append(
            f"  memory: {grown:+.1f} MiB ({per_call:+.0f} bytes a call) from {half[0]:,} to "
            f"{samples[-1][0]:,} calls with the API down, queue of 10,000, spool off "
            f"(target: bounded by the queue, not growing with the calls): "
            f"{'met' if bounded else 'MISSED'}"
        )
    return lines


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=20, help="rounds of every scenario")
    parser.add_argument(
        "--replicas", type=int, default=3, help="worker processes per contender (hash seeds 0..)"
    )
    parser.add_argument("--warmup", type=int, default=3, help="batches before timing")
    parser.add_argument("--import-runs", type=int, default=7)
    parser.add_argument("--memory-calls", type=int, default=100_000, help="0: skip")
    parser.add_argument("--only", help="contenders, comma-separated (the baseline always)")
    parser.add_argument("--scenarios", help="scenarios, comma-separated (default: all)")
    parser.add_argument("--batch-scale", type=float, default=1.0, help="calls per batch x")
    args = parser.parse_args()
    scenarios = SCENARIOS
    if args.scenarios:
        scenarios = [s for s in SCENARIOS if s.name in args.scenarios.split(",")]
    if args.batch_scale != 1.0:
        scenarios = [
            dataclasses.replace(s, batch=max(1, round(s.batch * args.batch_scale)))
            for s in scenarios
        ]
    contenders = [c for c in CONTENDERS if c.default]
    if args.only:
        wanted = {"baseline", *args.only.split(",")}
        contenders = [c for c in CONTENDERS if c.name in wanted]
    started = time.monotonic()
    header = machine_lines()
    results = Results()
    logs = Path(tempfile.mkdtemp(prefix="bench-compare-"))
    print(f"worker logs in {logs}", file=sys.stderr, flush=True)
    # Each replica a process of its own: how a process happens to be laid out in memory
    # moves its figures by a few microseconds, the same way for its whole life.
    workers = [Worker(c, logs, r) for r in range(args.replicas) for c in contenders]
    for worker in workers:
        failed = next(
            (w.error for w in workers if w.contender == worker.contender and w.error), None
        )
        worker.error = worker.error or failed
    try:
        run_scenarios(workers, scenarios, args.rounds, args.warmup, results)
    finally:
        for worker in workers:
            worker.close()
    workers = [w for w in workers if w.replica == 0]  # one row each from here on
    if args.import_runs:
        run_imports(contenders, args.import_runs, results)
    if args.memory_calls:
        run_memory(contenders, args.memory_calls, results)

    out = [
        "Per-call cost of metering / observing the ollama client, over an in-process "
        "mock of Ollama",
        *header,
        f"{args.rounds} rounds; in each, each of the {args.replicas} worker processes of every "
        f"contender (hash seeds 0 to {args.replicas - 1}) makes one batch of calls, in an "
        "order shuffled every round; figures over every call of every round",
        "median / p95: wall time per call, us; added / ratio: against the baseline's median; "
        "CPU: process CPU time per call, us, all threads, what the contender collected "
        "delivered or exported (flushed) included",
        "",
    ]
    for scenario in scenarios:
        out += scenario_block(scenario, workers, results)
        out.append("")
    if args.import_runs:
        out += import_lines(contenders, results)
        out.append("")
    if args.memory_calls:
        out += memory_lines(contenders, args.memory_calls, results)
        out.append("")
    notes = [f"  {w.contender.label}: {n}" for w in workers for n in w.notes]
    blocked = [f"  {w.contender.label}: {', '.join(w.blocked)}" for w in workers if w.blocked]
    refused = "connections or name lookups off this machine, refused:"
    out.append(refused + ("" if blocked else " none"))
    out += blocked
    if notes:
        out.append("notes:")
        out += notes
    out.append("")
    out += target_lines(results, args.memory_calls)
    out.append(f"\n(run took {time.monotonic() - started:.0f} s)")
    print("\n".join(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
