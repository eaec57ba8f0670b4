"""``revenium-ollama report`` (and the command's common behaviour), run as a user runs it:
a fresh interpreter reading a ledger filled with known rows, or filled by metered calls to
the Ollama simulator."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from collections.abc import Iterator
from decimal import ROUND_HALF_EVEN, Decimal
from pathlib import Path
from typing import Any

import ollama
import pytest

import revenium_ollama_transport as metering
from revenium_ollama_transport import ReveniumTransport
from revenium_ollama_transport._cli import main
from revenium_ollama_transport.testing import OllamaSimulator, SimulatedReply

from ._cli import NATIVE_TIMINGS, cli, fill, metering_into, record

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).parent.parent
PRICES = ROOT / "examples" / "prices.toml"

# Ollama's numbers in NATIVE_TIMINGS, per call: 26 tokens in 45_678_901 ns, 5 in 234_567_890.
PREFILL = Decimal(26) * 10**9 / Decimal(45_678_901)
GENERATION = Decimal(5) * 10**9 / Decimal(234_567_890)


def places(value: Decimal, n: int) -> Decimal:
    return value.quantize(Decimal(1).scaleb(-n), rounding=ROUND_HALF_EVEN)


@pytest.fixture
def ledger(tmp_path: Path) -> Path:
    """Ten llama3.2 calls for acme (minutes 0-9, 100..1000 ms, first token 10..100 ms, Ollama
    timings), then four qwen2.5 calls without timings (an error, a timeout, a cancelled
    call, a good one) for nobody."""
    path = tmp_path / "ledger.sqlite3"
    llama = [
        record(
            i,
            duration_ms=100 * (i + 1),
            ttft_ms=10 * (i + 1),
            organizationName="acme",
            subscriber={"id": f"u-{i % 2}"},
        )
        for i in range(10)
    ]
    qwen = [
        record(10, model="qwen2.5:0.5b", timings=None, stop="ERROR", error_code=500, ttft_ms=None),
        record(11, model="qwen2.5:0.5b", timings=None, stop="TIMEOUT", ttft_ms=None),
        record(12, model="qwen2.5:0.5b", timings=None, stop="CANCELLED", output_tokens=2),
        record(13, model="qwen2.5:0.5b", timings=None, input_tokens=100, output_tokens=40),
    ]
    fill(path, [*llama, *qwen])
    return path


def report(ledger: Path, *args: str) -> Any:
    done = cli("report", "--ledger", str(ledger), "--format", "json", *args)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


# --- the command ----------------------------------------------------------------------


def test_the_console_script_is_declared_and_runs() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert project["project"]["scripts"] == {
        "revenium-ollama": "revenium_ollama_transport._cli:main"
    }
    assert callable(main)
    script = Path(sys.executable).parent / "revenium-ollama"
    if script.exists():  # installed (pip install -e .): the script itself
        done = subprocess.run(
            [str(script), "--help"], capture_output=True, text=True, timeout=30, check=False
        )
        assert done.returncode == 0, done.stderr
        for command in ("report", "tail", "export", "upload", "simulate"):
            assert command in done.stdout


def test_report_help_documents_percentiles_and_the_prices_file() -> None:
    done = cli("report", "--help")
    assert done.returncode == 0
    text = " ".join(done.stdout.split())
    assert "nearest-rank" in text and "ceil(p/100 * n)" in text
    assert "input_per_million" in text and "gpu_hour" in text and "--reference" in text
    assert "half-to-even" in text and "llama3.2:latest -> llama3.2" in text


@pytest.mark.parametrize(
    ("args", "status", "message"),
    [
        (["report", "--ledger", "{missing}"], 1, "no ledger at"),
        (["tail", "--ledger", "{missing}"], 1, "no ledger at"),
        (["export", "--ledger", "{missing}"], 1, "no ledger at"),
        (["upload", "--ledger", "{missing}"], 1, "no ledger at"),
        (["report", "--ledger", "{ledger}", "--since", "3 fortnights"], 2, "neither an age"),
        (["report", "--ledger", "{ledger}", "--since", "1d", "--until", "2d"], 2, "not after"),
        (["report", "--ledger", "{ledger}", "--by", "model,colour"], 2, "group by any of"),
        (["report", "--ledger", "{ledger}", "--format", "xml"], 2, "invalid choice"),
        (["report", "--ledger", "{ledger}", "--reference", "x"], 2, "--reference needs"),
        (["report", "--ledger", "{ledger}", "--prices", "{missing}"], 1, "cannot read"),
        (["report", "--ledger", "{ledger}", "--prices", "{bad}"], 1, "bad.toml is not valid"),
        (["report", "--ledger", "{ledger}", "--prices", "{prices}", "--reference", "x"], 1, "'x'"),
        (["tail", "--ledger", "{ledger}", "-n", "-3"], 2, "-n/--lines"),
        (["simulate", "--port", "70000"], 2, "not a port"),
        (["frobnicate"], 2, "invalid choice"),
        ([], 2, "required: COMMAND"),
    ],
)
def test_errors_are_one_line_with_a_status(
    ledger: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    args: list[str],
    status: int,
    message: str,
) -> None:
    """In this process (the subprocess test below shows the same, end to end)."""
    (tmp_path / "bad.toml").write_text("[models\n")
    paths = {
        "missing": str(tmp_path / "missing.sqlite3"),
        "ledger": str(ledger),
        "bad": str(tmp_path / "bad.toml"),
        "prices": str(PRICES),
    }
    try:
        returned = main([arg.format(**paths) for arg in args])
    except SystemExit as exc:
        returned = exc.code  # type: ignore[assignment]
    out, err = capsys.readouterr()
    assert returned == status, err
    assert out == ""
    assert len(err.splitlines()) == 1, err
    assert message in err
    assert err.startswith("revenium-ollama")


def test_errors_end_the_process_without_a_traceback(tmp_path: Path) -> None:
    missing = str(tmp_path / "missing.sqlite3")
    for args, status in (
        (["report", "--ledger", missing], 1),
        (["export", "--ledger", missing, "--since", "yesterday"], 2),
        (["tail", "--bogus"], 2),
    ):
        done = cli(*args)
        assert done.returncode == status, done.stderr
        assert len(done.stderr.splitlines()) == 1, done.stderr
        assert "Traceback" not in done.stderr


def test_the_ledger_is_revenium_ledger_path_unless_given(ledger: Path, tmp_path: Path) -> None:
    done = cli("report", "--format", "csv", env={"REVENIUM_LEDGER_PATH": str(ledger)})
    assert done.returncode == 0, done.stderr
    assert len(done.stdout.splitlines()) == 3  # the header and two models
    elsewhere = cli("report", env={"REVENIUM_LEDGER_PATH": str(tmp_path / "none.sqlite3")})
    assert elsewhere.returncode == 1
    assert "none.sqlite3" in elsewhere.stderr


# --- the numbers ----------------------------------------------------------------------


def test_json_has_every_statistic_per_model(ledger: Path) -> None:
    document = report(ledger)
    assert document["by"] == ["model"]
    assert document["window"] == {"since": None, "until": None}
    llama, qwen = document["groups"]
    assert llama == {
        "model": "llama3.2:latest",
        "calls": 10,
        "errors": 0,
        "cancelled": 0,
        "input_tokens": 260,
        "output_tokens": 50,
        "latency_p50_ms": 500,  # nearest rank: the 5th of 100..1000
        "latency_p95_ms": 1000,  # the 10th
        "ttft_p50_ms": 50,
        "ttft_p95_ms": 100,
        "prefill_tokens_per_s": float(places(PREFILL, 1)),
        "generation_tokens_per_s": float(places(GENERATION, 1)),
        "load_p50_ms": 12.3,
        "load_total_s": 0.123,
    }
    assert qwen["model"] == "qwen2.5:0.5b"
    assert (qwen["calls"], qwen["errors"], qwen["cancelled"]) == (4, 2, 1)
    assert (qwen["input_tokens"], qwen["output_tokens"]) == (178, 52)
    assert qwen["ttft_p50_ms"] == 50 and qwen["ttft_p95_ms"] == 50  # two calls had one
    for field in ("prefill_tokens_per_s", "generation_tokens_per_s", "load_p50_ms"):
        assert qwen[field] is None  # the OpenAI routes report no Ollama timings
    assert document["total"]["calls"] == 14
    assert document["total"]["input_tokens"] == 438
    assert document["total"]["prefill_tokens_per_s"] == llama["prefill_tokens_per_s"]


def test_the_table_is_aligned_with_a_total_row(ledger: Path) -> None:
    done = cli("report", "--ledger", str(ledger), "--by", "organization")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].split() == [
        "organization",
        "calls",
        "errors",
        "cancelled",
        "in_tokens",
        "out_tokens",
        "p50_ms",
        "p95_ms",
        "ttft_p50_ms",
        "ttft_p95_ms",
        "prefill_tok/s",
        "gen_tok/s",
        "load_p50_ms",
        "load_total_s",
    ]
    assert lines[1].split()[:6] == ["acme", "10", "0", "0", "260", "50"]
    assert lines[2].split()[:6] == ["-", "4", "2", "1", "178", "52"]
    assert lines[3].split()[:6] == ["TOTAL", "14", "2", "1", "438", "102"]
    # Every column ends where its header ends (numbers are right-aligned).
    end = lines[0].index("calls") + len("calls")
    assert all(line[end - 2 : end] in ("10", " 4", "14") for line in lines[1:])


def test_csv_has_a_header_and_a_row_per_group(ledger: Path) -> None:
    done = cli("report", "--ledger", str(ledger), "--by", "model,subscriber", "--format", "csv")
    assert done.returncode == 0, done.stderr
    rows = list(csv.DictReader(io.StringIO(done.stdout)))
    assert [(r["model"], r["subscriber"], r["calls"]) for r in rows] == [
        ("llama3.2:latest", "u-0", "5"),
        ("llama3.2:latest", "u-1", "5"),
        ("qwen2.5:0.5b", "", "4"),
    ]
    assert rows[0]["prefill_tokens_per_s"] == str(places(PREFILL, 1))
    assert rows[2]["load_p50_ms"] == ""


def test_a_window_selects_calls_by_their_start(ledger: Path) -> None:
    # Calls start a minute apart from 2025-05-01T00:00Z; --until is exclusive.
    document = report(ledger, "--since", "2025-05-01T00:05Z", "--until", "2025-05-01T00:08")
    assert document["window"] == {"since": "2025-05-01T00:05:00Z", "until": "2025-05-01T00:08:00Z"}
    assert [(g["model"], g["calls"]) for g in document["groups"]] == [("llama3.2:latest", 3)]
    assert report(ledger, "--since", "1h")["groups"] == []  # long ago
    by_hour = report(ledger, "--by", "hour,day")["groups"]
    assert [(g["hour"], g["day"], g["calls"]) for g in by_hour] == [
        ("2025-05-01T00:00", "2025-05-01", 14)
    ]


# --- costs ----------------------------------------------------------------------------


def test_costs_from_the_example_prices_with_a_reference(ledger: Path) -> None:
    document = report(ledger, "--prices", str(PRICES), "--reference", "gpt-4o-mini")
    assert document["currency"] == "USD"
    assert document["reference"] == "gpt-4o-mini"
    assert document["cost_rounding"] == "6 decimals, half-to-even"
    llama, qwen = document["groups"]
    # llama3.2:latest matches "llama3.2": 1.20 per GPU-hour of Ollama's total_duration.
    busy_hours = Decimal(10 * NATIVE_TIMINGS["total_duration"]) / Decimal(3_600_000_000_000)
    assert llama["cost"] == str(places(Decimal("1.20") * busy_hours, 6))
    # qwen2.5:0.5b has token prices: 0.02 and 0.08 per million.
    assert qwen["cost"] == str(places((178 * Decimal("0.02") + 52 * Decimal("0.08")) / 10**6, 6))
    # At gpt-4o-mini's prices: 0.15 and 0.60 per million, on every call's tokens.
    reference = (438 * Decimal("0.15") + 102 * Decimal("0.60")) / 10**6
    assert document["total"]["reference_cost"] == str(places(reference, 6))
    assert document["notes"] == []


def test_an_unpriced_model_leaves_its_costs_blank_with_a_note(ledger: Path, tmp_path: Path) -> None:
    prices = tmp_path / "prices.json"
    prices.write_text(json.dumps({"models": {"llama3.2": {"input_per_million": "2"}}}))
    document = report(ledger, "--prices", str(prices))
    llama, qwen = document["groups"]
    assert llama["cost"] == "0.000520"
    assert qwen["cost"] is None and qwen["unpriced_models"] == ["qwen2.5:0.5b"]
    assert document["total"]["cost"] is None
    assert "no price for qwen2.5:0.5b" in document["notes"][0]

    table = cli("report", "--ledger", str(ledger), "--prices", str(prices))
    lines = table.stdout.splitlines()
    assert lines[0].split()[-1] == "cost_USD"
    assert lines[1].split()[-1] == "0.0005"  # 4 decimals in the table
    assert lines[2].split()[-1] != "0.0000"  # blank: the row ends with its last statistic
    assert lines[-1].startswith("note: no price for qwen2.5:0.5b")

    as_csv = cli("report", "--ledger", str(ledger), "--prices", str(prices), "--format", "csv")
    rows = list(csv.DictReader(io.StringIO(as_csv.stdout)))
    assert [r["cost"] for r in rows] == ["0.000520", ""]
    assert "no price for qwen2.5:0.5b" in as_csv.stderr  # notes keep out of the CSV


def test_costs_are_exact_where_a_float_sum_would_round_the_other_way(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite3"
    fill(path, [record(i, input_tokens=155, output_tokens=0) for i in range(3)])
    for name, text in (
        ("p.toml", '[models."llama3.2"]\ninput_per_million = 0.1\n'),
        ("p.json", '{"models": {"llama3.2": {"input_per_million": 0.1}}}'),
    ):
        (tmp_path / name).write_text(text)
        # Exactly 0.0000465, rounded half to even; in floats 4.6500000000000005e-05 -> ...47.
        assert report(path, "--prices", str(tmp_path / name))["total"]["cost"] == "0.000046"
        assert sum(155 * 0.1 / 1e6 for _ in range(3)) > 0.0000465


# --- end to end: calls metered into the ledger ------------------------------------------


@pytest.fixture
def metered_ledger(tmp_path: Path) -> Iterator[Path]:
    with metering_into(tmp_path / "metered.sqlite3") as path:
        yield path


def test_report_of_calls_metered_through_the_transport(
    metered_ledger: Path, sim: OllamaSimulator
) -> None:
    first = SimulatedReply(
        tokens=["a", "b", "c"],
        prompt_eval_count=40,
        total_duration=900_000_000,
        load_duration=100_000_000,
        prompt_eval_duration=80_000_000,
        eval_duration=600_000_000,
    )
    second = SimulatedReply(
        tokens=["x"] * 9,
        prompt_eval_count=60,
        total_duration=1_100_000_000,
        load_duration=300_000_000,
        prompt_eval_duration=120_000_000,
        eval_duration=300_000_000,
    )
    sim.queue(first, second, first)
    client: Any = ollama.Client(host=sim.url, transport=ReveniumTransport())
    messages = [{"role": "user", "content": "hi"}]
    client.chat(model="llama3.2:3b", messages=messages)
    client.chat(model="llama3.2:3b", messages=messages, stream=False)
    list(client.chat(model="llama3.2:3b", messages=messages, stream=True))
    sim.reply = SimulatedReply(status=500)
    with pytest.raises(ollama.ResponseError):
        client.generate(model="qwen2.5:0.5b", prompt="hi")
    assert metering.flush(10.0)

    document = report(metered_ledger, "--prices", str(PRICES))
    llama, qwen = document["groups"]
    assert llama["model"] == "llama3.2:3b"
    assert (llama["calls"], llama["errors"]) == (3, 0)
    assert (llama["input_tokens"], llama["output_tokens"]) == (140, 15)
    assert llama["prefill_tokens_per_s"] == float(places(Decimal(140) / Decimal("0.28"), 1))
    assert llama["generation_tokens_per_s"] == float(places(Decimal(15) / Decimal("1.5"), 1))
    assert llama["load_p50_ms"] == 100.0 and llama["load_total_s"] == 0.5
    # 2.9 s of Ollama's total_duration at 1.20 per GPU-hour.
    assert llama["cost"] == str(places(Decimal("2.9") * Decimal("1.20") / 3600, 6))
    assert (qwen["model"], qwen["calls"], qwen["errors"]) == ("qwen2.5:0.5b", 1, 1)
    assert document["total"]["calls"] == 4
