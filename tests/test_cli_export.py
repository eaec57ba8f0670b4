"""``revenium-ollama export``: every column of the window's rows, as JSON Lines or CSV."""

from __future__ import annotations

import csv
import io
import subprocess
from pathlib import Path

import orjson
import pytest

from revenium_ollama_transport import _ledger

from ._cli import COMMAND, cli, fill, record
from ._processes import clean_environment


@pytest.fixture
def ledger(tmp_path: Path) -> Path:
    path = tmp_path / "ledger.sqlite3"
    fill(path, [record(i, organizationName="acme", subscriber={"id": f"u-{i}"}) for i in range(5)])
    fill(path, [record(5, timings=None, stop="CANCELLED")], sent_live=True)
    return path


def test_jsonl_is_an_object_per_row_with_wire_and_details_parsed(ledger: Path) -> None:
    done = cli("export", "--ledger", str(ledger))
    assert done.returncode == 0, done.stderr
    rows = [orjson.loads(line) for line in done.stdout.splitlines()]
    assert [r["id"] for r in rows] == [1, 2, 3, 4, 5, 6]
    first = rows[0]
    assert list(first) == ["id", *_ledger.COLUMNS, "uploaded_at", "upload_refused"]
    expected = record(0, organizationName="acme", subscriber={"id": "u-0"})
    assert first["wire"] == expected.wire
    assert first["details"] == expected.details
    assert first["subscriber_id"] == "u-0" and first["organization_name"] == "acme"
    assert first["prompt_eval_duration_ns"] == 45_678_901
    assert first["sent_live"] == 0 and first["uploaded_at"] is first["upload_refused"] is None
    assert rows[5]["sent_live"] == 1 and rows[5]["total_duration_ns"] is None
    assert rows[5]["stop_reason"] == "CANCELLED"


def test_csv_to_a_file_within_a_window(ledger: Path, tmp_path: Path) -> None:
    out = tmp_path / "calls.csv"
    done = cli(
        "export",
        "--ledger",
        str(ledger),
        "--format",
        "csv",
        "--output",
        str(out),
        "--since",
        "2025-05-01T00:01:00Z",
        "--until",
        "2025-05-01T00:03:00Z",
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == ""
    assert "2 record(s) written to" in done.stderr
    rows = list(csv.DictReader(io.StringIO(out.read_text())))
    assert [r["transaction_id"] for r in rows] == ["tx-000001", "tx-000002"]
    assert (
        orjson.loads(rows[0]["wire"])
        == record(1, organizationName="acme", subscriber={"id": "u-1"}).wire
    )
    assert rows[0]["error_code"] == "" and rows[0]["input_tokens"] == "26"


def test_an_unwritable_output_is_one_error_line(ledger: Path, tmp_path: Path) -> None:
    done = cli("export", "--ledger", str(ledger), "-o", str(tmp_path / "no" / "such" / "dir.jsonl"))
    assert done.returncode == 1
    assert done.stderr.startswith("revenium-ollama export: error: cannot write")
    assert len(done.stderr.splitlines()) == 1


def test_a_reader_that_goes_away_ends_the_export_quietly(tmp_path: Path) -> None:
    path = tmp_path / "big.sqlite3"
    fill(path, [record(i) for i in range(3000)])  # megabytes: more than a pipe holds
    process = subprocess.Popen(
        [*COMMAND, "export", "--ledger", str(path)],
        env=clean_environment({}),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert process.stdout is not None and process.stderr is not None
    assert orjson.loads(process.stdout.readline())["id"] == 1
    process.stdout.close()  # as `| head -1` does
    assert process.wait(30) == 0
    assert process.stderr.read() == b""
    process.stderr.close()
