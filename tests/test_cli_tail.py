"""``revenium-ollama tail`` as a process of its own, following a ledger that this process
writes (directly, and through metered calls) until it is told to stop."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import ollama
import pytest

import revenium_ollama_transport as metering
from revenium_ollama_transport import ReveniumTransport
from revenium_ollama_transport.testing import OllamaSimulator, SimulatedReply

from ._cli import Running, fill, metering_into, record

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[Path]:
    """Three calls already stored; metered calls of this test go there too."""
    path = tmp_path / "ledger.sqlite3"
    fill(path, [record(i, organizationName="acme" if i == 2 else None) for i in range(3)])
    with metering_into(path):
        yield path


def test_tail_shows_the_last_rows_then_new_ones_until_sigint(
    ledger: Path, sim: OllamaSimulator
) -> None:
    tail = Running("tail", "--ledger", str(ledger), "-n", "2", "--interval", "0.05")
    try:
        assert tail.line() == (
            "2025-05-01T00:01:00.000Z  llama3.2:latest  CHAT  in=26  out=5  300ms  END"
        )
        assert tail.line().endswith("END  org=acme")
        # Shown: from here on every row is new.
        fill(ledger, [record(7, stop="ERROR", error_code=500, subscriber={"id": "u-9"})])
        assert tail.line() == (
            "2025-05-01T00:07:00.000Z  llama3.2:latest  CHAT  in=26  out=5  300ms  ERROR  "
            "subscriber=u-9"
        )
        sim.reply = SimulatedReply(tokens=["Hi", "!"], prompt_eval_count=12)
        client: Any = ollama.Client(host=sim.url, transport=ReveniumTransport())
        client.generate(
            model="qwen2.5:0.5b", prompt="hello", usage_metadata={"organization_id": "o"}
        )
        assert metering.flush(10.0)
        fields = tail.line().split("  ")
        assert fields[1:5] == ["qwen2.5:0.5b", "GENERATE", "in=12", "out=2"]
        assert fields[6:] == ["END", "org=o"]
        tail.process.send_signal(signal.SIGINT)
        assert tail.wait() == 0
        assert tail.errors() == ""
    finally:
        tail.stop()


def test_tail_from_now_ends_with_sigterm(ledger: Path) -> None:
    tail = Running("tail", "--ledger", str(ledger), "-n", "0", "--interval", "0.05")
    try:
        # Rows written before tail found the ledger's end are not shown, those after are:
        # write a row at a time until one comes through.
        for k in range(100):
            fill(ledger, [record(100 + k, model="sentinel")])
            if tail.line_within(0.5) is not None:
                break
        fill(ledger, [record(300 + i, model=f"after{i}") for i in range(2)])
        models: list[str] = []
        while len(models) < 2:
            model = tail.line().split("  ")[1]
            if model != "sentinel":  # one written while tail was starting, after all
                models.append(model)
        assert models == ["after0", "after1"]
        tail.process.send_signal(signal.SIGTERM)
        assert tail.wait() == 0
        assert tail.errors() == ""
    finally:
        tail.stop()
