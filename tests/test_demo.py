"""`make demo`: the examples on the simulator, into a fresh ledger, then the report."""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path

from revenium_ollama_transport.testing import OllamaSimulator

from ._processes import run_python

DEMO = Path(__file__).parent.parent / "examples" / "demo.py"


def report_rows(out: str) -> dict[tuple[str, str], list[str]]:
    """The report's table: (model, organization) -> the rest of the row."""
    table = out.split("--- revenium-ollama report --by model,organization ---\n", 1)[1]
    header, *lines = table.split("\n\n", 1)[0].splitlines()
    assert header.split()[:5] == ["model", "organization", "calls", "errors", "cancelled"]
    rows: dict[tuple[str, str], list[str]] = {}
    for line in lines:
        cells = line.split()
        if cells[0] == "TOTAL":
            rows[("TOTAL", "")] = cells[1:]
        else:
            rows[(cells[0], cells[1])] = cells[2:]
    return rows


def test_demo_runs_the_examples_into_a_fresh_ledger_and_reports_them(tmp_path: Path) -> None:
    with OllamaSimulator() as gone:  # a port where nothing answers
        nowhere = gone.url
    for _ in range(2):  # the second run starts from a fresh ledger again
        done = run_python(DEMO, {"OLLAMA_HOST": nowhere}, "--dir", str(tmp_path))
        assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert "using the bundled simulator" in out
    assert "to the local ledger only" in out
    for name in ("getting_started.py", "example_streaming.py", "example_metadata.py"):
        assert f"--- examples/{name} ---" in out
    rows = report_rows(out)
    model = "qwen2.5:0.5b"
    # calls, errors, cancelled, input and output tokens: the simulator's 18 in and 6 out per
    # call; the generate stopped after 3 chunks counts the 3 tokens that arrived.
    assert rows[(model, "acme-corp")][:5] == ["1", "0", "0", "18", "6"]
    assert rows[(model, "globex")][:5] == ["3", "0", "0", "54", "18"]
    assert rows[(model, "-")][:5] == ["3", "0", "1", "36", "15"]
    assert rows[("TOTAL", "")][:5] == ["7", "0", "1", "108", "39"]
    # prefill and generation speed from the simulator's timings: 18 tokens in 9 ms, 6 in 150 ms
    assert rows[("TOTAL", "")][9:11] == ["2000.0", "40.0"]
    ids = re.findall(r"transaction id: ([0-9a-f-]{36})", out)
    ledger = sqlite3.connect(tmp_path / "ledger.sqlite3")
    stored = {row[0] for row in ledger.execute("SELECT transaction_id FROM calls")}
    ledger.close()
    assert len(stored) == 7 and set(ids) <= stored
