"""The local ledger: what metered calls store in it, when it is on, and its file."""

from __future__ import annotations

import logging
import os
import sqlite3
import stat
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import ollama
import orjson
import pytest

import revenium_ollama_transport as metering
from revenium_ollama_transport import ReveniumTransport, _ledger
from revenium_ollama_transport._paths import APP_DIR
from revenium_ollama_transport._record import MeteringRecord
from revenium_ollama_transport._stats import counters
from revenium_ollama_transport.testing import FakeMeteringAPI, OllamaSimulator, SimulatedReply

from ._processes import clean_environment, run_python
from .conftest import API_KEY

MODEL = "llama3.2:3b"
MESSAGES = [{"role": "user", "content": "Why is the sky blue?"}]
LOGGER = "revenium_ollama_transport"


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[Path]:
    """Records of this test go to a ledger of its own (no API key: the ledger only)."""
    assert metering.flush(10.0)
    counters.reset()
    path = tmp_path / "ledger" / "usage.sqlite3"
    metering.configure(reset=True, ledger="on", ledger_path=str(path))
    yield path
    metering.flush(10.0)
    metering.configure(reset=True)


def rows(path: Path) -> list[dict[str, Any]]:
    connection = sqlite3.connect(path)
    connection.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in connection.execute("SELECT * FROM calls ORDER BY id")]
    finally:
        connection.close()


def test_a_metered_chat_stores_every_column(ledger: Path, sim: OllamaSimulator) -> None:
    sim.reply = SimulatedReply(
        tokens=["Blue", " light", " scatters", "."],
        prompt_eval_count=31,
        prompt_eval_cached_count=7,
        total_duration=500_000_000,
        load_duration=20_000_000,
        prompt_eval_duration=62_000_000,
        eval_duration=400_000_000,
    )
    before = datetime.now().timestamp()
    client: Any = ollama.Client(host=sim.url, transport=ReveniumTransport())
    response = client.chat(
        model=MODEL,
        messages=MESSAGES,
        usage_metadata={
            "organization_id": "acme",
            "product_id": "helpdesk",
            "subscriber": {
                "id": "u-1",
                "email": "u1@example.com",
                "credential": {"name": "key", "value": "sk-secret"},
            },
            "subscription_id": "sub-9",
            "agent": "triage",
            "trace_id": "trace-42",
            "task_type": "summarise",
            "environment": "staging",
        },
    )
    assert metering.flush(10.0)
    (row,) = rows(ledger)
    assert row["transaction_id"] == response._revenium_transaction_id
    assert before - 1 <= row["started_at"] <= datetime.now().timestamp() + 1
    wire = orjson.loads(row["wire"])
    assert row["request_time"] == wire["requestTime"]
    assert row["response_time"] == wire["responseTime"]
    assert row["completion_start_time"] == wire["completionStartTime"]
    expected = {
        "model": MODEL,
        "operation_type": "CHAT",
        "is_streamed": 0,
        "stop_reason": "END",
        "error_code": None,
        "error_reason": None,
        "input_tokens": 31,
        "output_tokens": 4,
        "total_tokens": 35,
        "cache_read_tokens": 0,
        "reasoning_tokens": 0,
        "organization_name": "acme",
        "product_name": "helpdesk",
        "subscriber_id": "u-1",
        "subscriber_email": "u1@example.com",
        "subscription_id": "sub-9",
        "agent": "triage",
        "trace_id": "trace-42",
        "task_type": "summarise",
        "environment": "staging",
        "retry_number": None,
        "total_duration_ns": 500_000_000,
        "load_duration_ns": 20_000_000,
        "prompt_eval_duration_ns": 62_000_000,
        "eval_duration_ns": 400_000_000,
        "prompt_eval_cached_count": 7,
        "route": "/api/chat",
        "host": f"http://127.0.0.1:{sim.port}",
        "sent_live": 0,
        "uploaded_at": None,
    }
    assert {k: row[k] for k in expected} == expected
    assert row["request_duration_ms"] == wire["requestDuration"] >= 0
    assert row["time_to_first_token_ms"] == wire["timeToFirstToken"]
    assert wire["inputTokenCount"] == 31 and wire["subscriber"]["id"] == "u-1"
    assert orjson.loads(row["details"])["route"] == "/api/chat"
    assert row["written_at"] >= row["started_at"]
    assert metering.stats().get("ledger_written") == 1
    assert "dropped.no_api_key" not in metering.stats()


def test_streams_errors_and_the_openai_api_are_stored_as_their_records_say(
    ledger: Path, sim: OllamaSimulator
) -> None:
    client = ollama.Client(host=sim.url, transport=ReveniumTransport())
    sim.reply = SimulatedReply(tokens=["a", "b", "c"], prompt_eval_count=5)
    assert len(list(client.chat(model=MODEL, messages=MESSAGES, stream=True))) == 4
    sim.reply = SimulatedReply(tokens=["a", "b", "c", "d"])
    stream = client.chat(model=MODEL, messages=MESSAGES, stream=True)
    next(stream)
    stream.close()  # type: ignore[attr-defined]  # the caller stops early
    sim.reply = SimulatedReply(status=500, error="model crashed")
    with pytest.raises(ollama.ResponseError):
        client.chat(model=MODEL, messages=MESSAGES)
    sim.reply = SimulatedReply(prompt_eval_count=9)
    with ReveniumTransport() as transport:
        body = httpx.Client(transport=transport).post(
            f"{sim.url}/v1/chat/completions",
            json={"model": MODEL, "messages": MESSAGES},
        )
    assert body.status_code == 200
    assert metering.flush(10.0)
    streamed, cancelled, failed, openai = rows(ledger)
    assert (streamed["is_streamed"], streamed["stop_reason"]) == (1, "END")
    assert (streamed["input_tokens"], streamed["output_tokens"]) == (5, 3)
    assert streamed["time_to_first_token_ms"] is not None
    assert cancelled["stop_reason"] == "CANCELLED" and cancelled["output_tokens"] >= 1
    assert (failed["stop_reason"], failed["error_code"]) == ("ERROR", 500)
    assert failed["error_reason"] == "model crashed"
    assert openai["route"] == "/v1/chat/completions" and openai["input_tokens"] == 9
    assert openai["eval_duration_ns"] is None  # the OpenAI API carries no Ollama timings


def test_a_replayed_record_is_stored_once(tmp_path: Path) -> None:
    path = tmp_path / "l.sqlite3"
    record = MeteringRecord(
        wire={"transactionId": "t-1", "requestTime": "2026-12-05T10:00:00.000Z", "model": "m"},
        details={},
    )
    connection = _ledger.connect(path)
    assert _ledger.insert(connection, [_ledger.row(record, False, 1.0)]) == 1
    assert _ledger.insert(connection, [_ledger.row(record, False, 2.0)]) == 0
    (row,) = rows(path)
    assert row["started_at"] == datetime.fromisoformat("2026-12-05T10:00:00+00:00").timestamp()


def test_a_batch_refused_as_locked_is_tried_again_and_stored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "l.sqlite3"
    _ledger.connect(path).close()
    monkeypatch.setattr(_ledger, "_BUSY_TIMEOUT_S", 0.05)  # "locked" before the lock goes
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN EXCLUSIVE")
    release = threading.Timer(0.15, holder.rollback)  # within the writer's second attempt
    items = [
        (MeteringRecord(wire={"transactionId": f"t-{i}", "model": "m"}, details={}), b"{}")
        for i in range(3)
    ]
    written, dropped = counters.get("ledger_written"), counters.get("dropped.ledger_error")
    writer = _ledger.LedgerWriter()
    release.start()
    try:
        writer.write(items, path, sent_live=False)
    finally:
        release.join()
        holder.close()
        writer.close()
    assert counters.get("dropped.ledger_error") == dropped
    assert counters.get("ledger_written") == written + 3
    assert sorted(r["transaction_id"] for r in rows(path)) == ["t-0", "t-1", "t-2"]


def test_an_existing_database_is_migrated_and_a_newer_one_refused(tmp_path: Path) -> None:
    old = tmp_path / "old.sqlite3"
    sqlite3.connect(old).close()  # version 0: an empty database
    assert _ledger.connect(old).execute("PRAGMA user_version").fetchone()[0] == (
        _ledger.SCHEMA_VERSION
    )
    newer = tmp_path / "newer.sqlite3"
    connection = sqlite3.connect(newer)
    connection.execute(f"PRAGMA user_version = {_ledger.SCHEMA_VERSION + 1}")
    connection.close()
    with pytest.raises(_ledger.LedgerError, match="newer than this package"):
        _ledger.connect(newer)
    with pytest.raises(_ledger.LedgerError, match="no ledger at"):
        _ledger.connect(tmp_path / "absent.sqlite3", create=False)


def test_a_version_1_ledger_is_migrated_keeping_its_rows(tmp_path: Path) -> None:
    path = tmp_path / "v1.sqlite3"
    connection = sqlite3.connect(path)
    connection.executescript(_ledger._MIGRATIONS[0] + "PRAGMA user_version = 1;")
    record = MeteringRecord(wire={"transactionId": "t-old", "model": "m"}, details={})
    connection.execute(
        f"INSERT INTO calls ({', '.join(_ledger.COLUMNS)}) "
        f"VALUES ({', '.join('?' for _ in _ledger.COLUMNS)})",
        _ledger.row(record, False, 1.0),
    )
    connection.commit()
    connection.close()
    migrated = _ledger.connect(path)
    assert migrated.execute("PRAGMA user_version").fetchone()[0] == _ledger.SCHEMA_VERSION >= 2
    assert migrated.execute("SELECT transaction_id, upload_refused FROM calls").fetchall() == [
        ("t-old", None)
    ]
    index = migrated.execute(
        "SELECT sql FROM sqlite_master WHERE name = 'calls_not_uploaded'"
    ).fetchone()[0]
    assert "upload_refused IS NULL" in index


def test_an_unwritable_ledger_costs_records_with_one_warning_never_a_call(
    tmp_path: Path, sim: OllamaSimulator, caplog: pytest.LogCaptureFixture
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    assert metering.flush(10.0)
    counters.reset()
    metering.configure(reset=True, ledger="on", ledger_path=str(blocker / "ledger.sqlite3"))
    try:
        client = ollama.Client(host=sim.url, transport=ReveniumTransport())
        with caplog.at_level(logging.WARNING, logger=LOGGER):
            for _ in range(3):
                assert client.chat(model=MODEL, messages=MESSAGES).message.content
                assert metering.flush(10.0)
    finally:
        metering.configure(reset=True)
    warnings = [r for r in caplog.records if r.name == LOGGER and "ledger" in r.getMessage()]
    assert len(warnings) == 1
    assert str(blocker) in warnings[0].getMessage()
    assert metering.stats().get("dropped.ledger_error") == 3


CALLER = textwrap.dedent(
    """
    import sys, ollama, orjson
    import revenium_ollama_transport as metering
    client = ollama.Client(host=sys.argv[1])
    ids = [client.chat(model="m", messages=[{"role": "user", "content": "hi"}])
           ._revenium_transaction_id for _ in range(int(sys.argv[2]))]
    assert metering.flush(30.0)
    print(orjson.dumps({"ids": ids, "stats": metering.stats()}).decode())
    """
)


def _caller(tmp_path: Path) -> Path:
    script = tmp_path / "caller.py"
    script.write_text(CALLER)
    return script


def test_without_a_key_records_go_to_the_ledger_in_the_data_directory(
    tmp_path: Path, sim: OllamaSimulator
) -> None:
    data = tmp_path / "data"
    # REVENIUM_LEDGER unset: the default, on without a key.
    env = {"XDG_DATA_HOME": str(data), "REVENIUM_LEDGER": ""}
    done = run_python(_caller(tmp_path), env, sim.url, "3")
    assert done.returncode == 0, done.stderr
    report = orjson.loads(done.stdout)
    path = data / "revenium-ollama-transport" / "ledger.sqlite3"
    if sys.platform.startswith("linux"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert [r["transaction_id"] for r in rows(path)] == report["ids"]
    assert report["stats"]["ledger_written"] == 3
    assert "dropped.no_api_key" not in report["stats"]


def test_with_a_key_the_ledger_is_off_unless_asked_for(
    tmp_path: Path, sim: OllamaSimulator, api: FakeMeteringAPI
) -> None:
    data = tmp_path / "data"
    env = {
        "XDG_DATA_HOME": str(data),
        "REVENIUM_LEDGER": "",
        "REVENIUM_METERING_API_KEY": API_KEY,
        "REVENIUM_METERING_BASE_URL": api.url,
    }
    done = run_python(_caller(tmp_path), env, sim.url, "2")
    assert done.returncode == 0, done.stderr
    assert not (data / "revenium-ollama-transport").exists()

    copy = tmp_path / "copy.sqlite3"
    env |= {"REVENIUM_LEDGER": "on", "REVENIUM_LEDGER_PATH": str(copy)}
    done = run_python(_caller(tmp_path), env, sim.url, "2")
    assert done.returncode == 0, done.stderr
    ids = orjson.loads(done.stdout)["ids"]
    stored = rows(copy)
    assert [r["transaction_id"] for r in stored] == ids
    assert {r["sent_live"] for r in stored} == {1}
    assert ids[0] in {r["transactionId"] for r in api.wait_for_records(4)}


def test_ledger_off_without_a_key_drops_as_before(tmp_path: Path, sim: OllamaSimulator) -> None:
    data = tmp_path / "data"
    done = run_python(
        _caller(tmp_path), {"XDG_DATA_HOME": str(data), "REVENIUM_LEDGER": "off"}, sim.url, "1"
    )
    assert done.returncode == 0, done.stderr
    assert orjson.loads(done.stdout)["stats"]["dropped.no_api_key"] == 1
    assert not (data / "revenium-ollama-transport").exists()


def test_four_processes_writing_one_ledger_lose_no_row(
    tmp_path: Path, sim: OllamaSimulator
) -> None:
    path = tmp_path / "shared.sqlite3"
    script = _caller(tmp_path)
    env = clean_environment({"REVENIUM_LEDGER": "on", "REVENIUM_LEDGER_PATH": str(path)})
    processes = [
        subprocess.Popen(
            [sys.executable, str(script), sim.url, "150"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    ids: list[str] = []
    for process in processes:
        out, err = process.communicate(timeout=120)
        assert process.returncode == 0, err
        report = orjson.loads(out)
        assert report["stats"]["ledger_written"] == 150, report["stats"]
        ids += report["ids"]
    stored = [r["transaction_id"] for r in rows(path)]
    assert len(ids) == 600 == len(set(ids))
    assert sorted(stored) == sorted(ids)


@pytest.mark.skipif(sys.platform in ("win32", "darwin"), reason="XDG is for the other POSIX")
def test_the_default_ledger_is_in_the_xdg_data_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    assert _ledger.resolve_path(None) == tmp_path / "data" / APP_DIR / "ledger.sqlite3"
    monkeypatch.setenv("XDG_DATA_HOME", "relative/is/ignored")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert _ledger.resolve_path("") == (
        tmp_path / "home" / ".local" / "share" / APP_DIR / "ledger.sqlite3"
    )
    assert _ledger.resolve_path("~/x.sqlite3") == tmp_path / "home" / "x.sqlite3"


FORKING = textwrap.dedent(
    """
    import os, sys, ollama, orjson
    import revenium_ollama_transport as metering
    client = ollama.Client(host=sys.argv[1])
    def call():
        return client.chat(model="m", messages=[{"role": "user", "content": "hi"}])
    ids = [call()._revenium_transaction_id]
    assert metering.flush(30.0)  # the parent's ledger connection is open now
    reader, writer = os.pipe()
    pid = os.fork()
    if pid == 0:
        child_id = call()._revenium_transaction_id
        ok = metering.flush(30.0)
        os.write(writer, orjson.dumps([child_id, ok]))
        os._exit(0)
    os.close(writer)
    child_id, ok = orjson.loads(os.read(reader, 4096))
    assert ok and os.waitpid(pid, 0)[1] == 0
    ids += [child_id, call()._revenium_transaction_id]
    assert metering.flush(30.0)
    print(orjson.dumps({"ids": ids, "stats": metering.stats()}).decode())
    """
)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork is POSIX")
def test_a_forked_child_writes_the_ledger_with_its_own_connection(
    tmp_path: Path, sim: OllamaSimulator
) -> None:
    script = tmp_path / "forking.py"
    script.write_text(FORKING)
    path = tmp_path / "l.sqlite3"
    done = run_python(script, {"REVENIUM_LEDGER": "on", "REVENIUM_LEDGER_PATH": str(path)}, sim.url)
    assert done.returncode == 0, done.stderr
    report = orjson.loads(done.stdout)
    assert report["stats"]["ledger_written"] == 2  # the parent's two; the child wrote its own
    assert sorted(r["transaction_id"] for r in rows(path)) == sorted(report["ids"])
    assert len(set(report["ids"])) == 3
