"""The comparison harness (benchmarks/compare.py) runs end to end with this package alone.

The other contenders' packages are not in the test environment and are not needed here:
only the baseline, a do-nothing transport and this package take part, for a few rounds.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def run_script(name: str, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """A script of benchmarks/ run as a user runs it: without this suite's REVENIUM_ settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("REVENIUM_")}
    return subprocess.run(
        [sys.executable, str(BENCHMARKS / name), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        check=False,
    )


def _load(script: str) -> Any:
    """A script of benchmarks/ as a module."""
    spec = importlib.util.spec_from_file_location(Path(script).stem, BENCHMARKS / script)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # where its dataclasses look themselves up
    spec.loader.exec_module(module)
    return module


def test_compare_prints_a_table_with_our_records_checked() -> None:
    done = run_script(
        "compare.py",
        "--only=null-transport,ours-installed,ours-transport",
        "--scenarios=chat_small,chat_stream,embed",
        "--rounds=2",
        "--warmup=1",
        "--replicas=1",
        "--import-runs=1",
        "--memory-calls=1500",
    )
    assert done.returncode == 0, done.stderr[-2000:]
    table = done.stdout
    assert table.startswith("Per-call cost"), table
    assert "machine: " in table
    rows = [line for line in table.splitlines() if "revenium-ollama-transport, installed" in line]
    # chat, stream and embed: each a timed row whose records carry Ollama's token counts.
    assert len([row for row in rows if row.rstrip().endswith(" ok")]) == 3, table
    assert "not available" not in table and "failed" not in table, table
    assert "connections or name lookups off this machine, refused: none" in table
    assert "import: " in table and "memory: " in table


def test_compare_runs_the_diagnostic_rows() -> None:
    done = run_script(
        "compare.py",
        "--only=ours-caller-only,caller-only-churned,baseline-churned",
        "--scenarios=chat_small",
        "--rounds=2",
        "--warmup=1",
        "--replicas=1",
        "--import-runs=1",
        "--memory-calls=0",
    )
    assert done.returncode == 0, done.stderr[-2000:]
    labels = [
        "revenium-ollama-transport, records discarded",
        "records discarded, objects churned",
        "ollama alone, objects churned",
    ]
    cpu: list[float] = []
    for label in labels:
        [row] = [line for line in done.stdout.splitlines() if line.startswith(f"  {label}  ")]
        # A timed row (median, p95, added, ratio, CPU), and no records to check.
        figures = row[len(label) + 2 :].split()
        assert len(figures) == 6 and figures[-1] == "-", row
        assert float(figures[0]) > 0, row
        cpu.append(float(figures[4]))
    # The churn after each batch is in the CPU column: thousands of objects a batch of 20
    # calls, each call's share far above the ~200 us of the call itself (~2x here).
    discarded, churned, baseline_churned = cpu
    assert churned > discarded + 50 and baseline_churned > discarded + 50, done.stdout


def test_workers_compile_bytecode_and_keep_no_revenium_settings(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Under PYTHONDONTWRITEBYTECODE this (editable) package would be compiled from source
    # in every timed import run, where each contender from PyPI has its .pyc.
    monkeypatch.setenv("PYTHONDONTWRITEBYTECODE", "1")
    monkeypatch.setenv("REVENIUM_METERING_API_KEY", "hak_not_for_workers")
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    compare = _load("compare.py")
    env = compare.worker_environment(2)
    assert "PYTHONDONTWRITEBYTECODE" not in env
    assert not [name for name in env if name.startswith("REVENIUM_")]
    assert env["PYTHONHASHSEED"] == "2" and env["DO_NOT_TRACK"] == "1"


def test_the_instruction_counts_worker_runs_each_mode() -> None:
    # What count_instructions.py runs under valgrind (which CI lacks), run here without it:
    # every mode completes, and the delivery mode checks that each record was stored.
    for mode in ("plain", "transport", "installed", "delivery"):
        done = run_script("_instructions_worker.py", mode, "20", timeout=120)
        assert done.returncode == 0, (mode, done.stderr[-2000:])


def test_allocator_calls_are_read_off_compressed_callgrind_names() -> None:
    count = _load("count_instructions.py")
    text = "\n".join(
        [
            "fn=(1) dict_new",
            "cfn=(2) _PyObject_Malloc",
            "calls=3 0x10",
            "5 7",
            "cfn=(3) _PyObject_GC_Link",
            "calls=2 0x20",
            "fn=(2)",  # the allocator's own costs: not a call
            "9 9",
            "fn=(4) list_new",
            "cfn=(2)",  # the name given once, then its number alone
            "cfi=(5) obmalloc.c",
            "calls=4 0x30",
            "cfn=(6) _PyObject_Malloc_helper",  # only the exact names count
            "calls=100 0x40",
        ]
    )
    assert count.allocator_calls(text) == {"_PyObject_Malloc": 7, "_PyObject_GC_Link": 2}


def test_the_delivery_benchmark_stores_every_record_and_prints_each_figure() -> None:
    done = run_script(
        "bench_delivery.py",
        "--records=200",
        "--rounds=2",
        "--calls=10",
        "--lone=5",
        "--gc-calls=100",
    )
    assert done.returncode == 0, done.stderr[-2000:]  # 1: a record was not stored
    lines = done.stdout.splitlines()
    heading = next(i for i, line in enumerate(lines) if line.startswith("records that come"))
    lone = [line.split() for line in lines[heading + 1 : heading + 3]]
    # Both spool settings measured, in microseconds (a Linux thread's CPU clock here).
    assert [row[1] for row in lone] == ["off", "on"], done.stdout
    assert all(row[2].isdigit() for row in lone), done.stdout
    heading = next(i for i, line in enumerate(lines) if line.startswith("full collections"))
    # Both clients, each with a count and the milliseconds they took.
    counts = [
        re.fullmatch(r"(with(?:out)? metering) +\d+ \(\d+ ms\)", line)
        for line in lines[heading + 1 : heading + 3]
    ]
    assert [m and m[1] for m in counts] == ["without metering", "with metering"], done.stdout


def test_the_transport_benchmark_prints_every_scenario_and_the_cold_batches() -> None:
    done = run_script("bench_transport.py", "--rounds=60")
    assert done.returncode == 0, done.stderr[-2000:]
    out = done.stdout
    for scenario in ("chat, small prompt", "chat, 2 KB prompt", "embed", "openai SDK stream"):
        assert re.search(rf"^{re.escape(scenario)}.* \| .* \| ", out, re.MULTILINE), out
    # Both kinds of figure after the caches are evicted, each for both metered clients.
    figure = r"[\d.]+ \([+-][\d.]+, [\d.]+\)"
    for label in ("first call of a batch", "the other calls"):
        pattern = rf"^  {label}: baseline [\d.]+; transport {figure}; installed {figure}$"
        assert re.search(pattern, out, re.MULTILINE), out
    delivered = re.search(
        r"during the run: (\d+) of (\d+) \(all flushed\); stored there: (\d+)", out
    )
    assert delivered is not None, out
    assert delivered[1] == delivered[2] == delivered[3], out
