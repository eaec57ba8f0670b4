"""``revenium-ollama upload`` against the fake metering API (real HTTP on 127.0.0.1): every
record stored once, progress kept across an interruption, refusals counted, a refused key
stopping the run without showing it."""

from __future__ import annotations

import signal
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from revenium_ollama_transport.testing import FakeMeteringAPI, Mode
from revenium_ollama_transport.testing._server import _Exchange

from ._cli import Running, cli, fill, record
from .conftest import API_KEY

pytestmark = pytest.mark.timeout(60)


class TurnsAfter(FakeMeteringAPI):
    """Stores the first ``n`` records (a few more when requests are in flight together),
    then switches, once, to ``mode``: a deterministic outage partway through an upload."""

    def __init__(self, n: int, mode: Mode) -> None:
        super().__init__(expected_api_key=API_KEY)
        self._n = n
        self._then: Mode | None = mode

    def _handle(self, exchange: _Exchange) -> None:
        if self._then is not None and len(self.records) >= self._n:
            self.set_mode(self._then)
            self._then = None
        super()._handle(exchange)


def environment(api: FakeMeteringAPI, key: str = API_KEY) -> dict[str, str]:
    return {"REVENIUM_METERING_API_KEY": key, "REVENIUM_METERING_BASE_URL": api.url}


def uploaded(path: Path) -> list[str]:
    connection = sqlite3.connect(path)
    try:
        query = "SELECT transaction_id FROM calls WHERE uploaded_at IS NOT NULL ORDER BY id"
        return [row[0] for row in connection.execute(query)]
    finally:
        connection.close()


def refused(path: Path) -> dict[str, int]:
    """Transaction id -> the status the API refused it with at an upload."""
    connection = sqlite3.connect(path)
    try:
        query = "SELECT transaction_id, upload_refused FROM calls WHERE upload_refused IS NOT NULL"
        return dict(connection.execute(query).fetchall())
    finally:
        connection.close()


def stored_once(api: FakeMeteringAPI) -> set[str]:
    ids = [str(r["transactionId"]) for r in api.records]
    assert len(ids) == len(set(ids))
    return set(ids)


@pytest.fixture
def ledger(tmp_path: Path) -> Path:
    path = tmp_path / "ledger.sqlite3"
    fill(path, [record(i, organizationName="acme") for i in range(300)])
    fill(path, [record(1000 + i) for i in range(5)], sent_live=True)
    return path


@pytest.fixture
def api() -> Iterator[FakeMeteringAPI]:
    with FakeMeteringAPI(expected_api_key=API_KEY) as fake:
        yield fake


def test_every_record_is_stored_once_as_it_was_recorded(ledger: Path, api: FakeMeteringAPI) -> None:
    dry = cli("upload", "--ledger", str(ledger), "--dry-run", env={})  # no key needed
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.splitlines() == [
        "300 record(s) would be uploaded to https://api.revenium.ai/meter/v2/ai/completions",
        "(5 more were sent live; --all includes them)",
    ]

    done = cli("upload", "--ledger", str(ledger), env=environment(api))
    assert done.returncode == 0, done.stderr
    assert (
        done.stdout
        == f"uploaded 300, refused 0, remaining 0 (to {api.url}/meter/v2/ai/completions)\n"
    )
    # Not a terminal: a progress line every tenth of the way.
    progress = done.stderr.splitlines()
    assert progress[0] == "upload: 30/300 (10%)" and progress[-1] == "upload: 300/300 (100%)"
    assert len(progress) == 10

    assert stored_once(api) == {f"tx-{i:06d}" for i in range(300)}
    assert len(api.received) == 300
    first = next(r for r in api.received if r.headers["idempotency-key"] == "tx-000000")
    assert first.headers["x-api-key"] == API_KEY
    assert first.headers["content-type"] == "application/json"
    assert orjson.loads(first.body) == record(0, organizationName="acme").wire
    assert uploaded(ledger) == [f"tx-{i:06d}" for i in range(300)]

    again = cli("upload", "--ledger", str(ledger), env=environment(api))
    assert (again.returncode, again.stdout) == (0, "nothing to upload\n")
    assert len(api.received) == 300

    live_too = cli("upload", "--ledger", str(ledger), "--all", env=environment(api))
    assert live_too.returncode == 0, live_too.stderr
    assert live_too.stdout.startswith("uploaded 5, refused 0, remaining 0")
    assert len(stored_once(api)) == 305


def test_an_interrupted_upload_resumes_with_nothing_lost_or_stored_twice(ledger: Path) -> None:
    with TurnsAfter(120, "hang") as api:
        upload = Running(
            "upload", "--ledger", str(ledger), "--concurrency", "4", env=environment(api)
        )
        try:
            # Wait until a request hangs: the upload cannot finish, it is stuck partway.
            seen = api.wait_for_received(121)
            while not any(r.status is None for r in seen):
                seen = api.wait_for_received(len(seen) + 1)
            upload.process.send_signal(signal.SIGINT)
            assert upload.wait() == 1
            summary = upload.line()
        finally:
            upload.stop()
        assert "interrupted: run upload again to resume" in upload.errors()
        assert "Traceback" not in upload.errors()
        done_first = set(uploaded(ledger))
        # Marked uploaded: only what the API stored, and (nearly) all of it.
        stored = stored_once(api)
        assert done_first <= stored
        assert len(stored) - len(done_first) <= 4  # answered as the signal came
        assert summary.startswith(
            f"uploaded {len(done_first)}, refused 0, remaining {300 - len(done_first)} "
        )
        requests_first = len(api.received)

        api.set_mode("normal")
        rerun = cli("upload", "--ledger", str(ledger), env=environment(api))
        assert rerun.returncode == 0, rerun.stderr
        assert rerun.stdout.startswith(f"uploaded {300 - len(done_first)}, refused 0, remaining 0")
        assert stored_once(api) == {f"tx-{i:06d}" for i in range(300)}
        assert len(uploaded(ledger)) == 300
        # Sent again: at most the hung requests and those stored but not yet marked.
        assert len(api.received) - requests_first == 300 - len(done_first)
        assert requests_first <= len(stored) + 4


def test_an_api_that_goes_down_stops_the_run_then_a_rerun_finishes(ledger: Path) -> None:
    with TurnsAfter(100, "down") as api:
        options = ("--concurrency", "4", "--max-attempts", "2", "--max-retry-wait", "0.01")
        first = cli("upload", "--ledger", str(ledger), *options, env=environment(api))
        assert first.returncode == 1
        assert first.stderr.splitlines()[-1].startswith(
            "revenium-ollama upload: error: the metering API is not accepting records (after "
            "2 attempt(s), the last: "
        )
        assert first.stderr.splitlines()[-1].endswith("stopped: run upload again to resume")
        done_first = uploaded(ledger)
        assert 100 <= len(done_first) < 300
        assert set(done_first) == stored_once(api)
        assert first.stdout.startswith(
            f"uploaded {len(done_first)}, refused 0, remaining {300 - len(done_first)} "
        )

        api.set_mode("normal")
        second = cli("upload", "--ledger", str(ledger), *options, env=environment(api))
        assert second.returncode == 0, second.stderr
        assert stored_once(api) == {f"tx-{i:06d}" for i in range(300)}
        assert len(uploaded(ledger)) == 300


def test_refusals_are_counted_not_retried_and_transient_answers_are(
    tmp_path: Path, api: FakeMeteringAPI
) -> None:
    path = tmp_path / "ledger.sqlite3"
    fill(path, [record(i) for i in range(10)])
    # One at a time, in order: tx 0 gets 429 (retried at once, as Retry-After says) and
    # then 400; tx 1 gets 400; the rest are stored.
    api.respond_with(429, retry_after=0)
    api.respond_with(400, times=2, body={"error": "invalid_field", "message": "model is bad"})
    done = cli("upload", "--ledger", str(path), "--concurrency", "1", env=environment(api))
    assert done.returncode == 1  # refused records remain in the ledger
    assert done.stdout.startswith("uploaded 8, refused 2, remaining 0")
    assert (
        "refused records stay in the ledger, marked with the status and not sent again "
        "unless --retry-refused (HTTP 400: 2); the first: tx-000000: HTTP 400: model is bad"
    ) in done.stderr
    assert [r.status for r in api.received][:4] == [429, 400, 400, 201]
    assert len(api.received) == 11
    assert uploaded(path) == [f"tx-{i:06d}" for i in range(2, 10)]
    assert refused(path) == {"tx-000000": 400, "tx-000001": 400}

    # A later run leaves the refused records alone, and says how to send them again.
    dry = cli("upload", "--ledger", str(path), "--dry-run", env=environment(api))
    assert dry.stdout.splitlines()[1:] == [
        "(2 more were refused by an earlier upload; --retry-refused includes them)"
    ]
    again = cli("upload", "--ledger", str(path), env=environment(api))
    assert (again.returncode, again.stdout) == (0, "nothing to upload\n")
    assert len(api.received) == 11
    retried = cli("upload", "--ledger", str(path), "--retry-refused", env=environment(api))
    assert retried.returncode == 0, retried.stderr
    assert retried.stdout.startswith("uploaded 2, refused 0, remaining 0")
    assert uploaded(path) == [f"tx-{i:06d}" for i in range(10)]
    assert refused(path) == {}


def test_a_refused_key_stops_the_run_without_showing_the_key(
    ledger: Path, api: FakeMeteringAPI
) -> None:
    wrong = "hak_wrong_0123456789abcdef"
    done = cli("upload", "--ledger", str(ledger), env=environment(api, key=wrong))
    assert done.returncode == 1
    error = done.stderr.splitlines()[-1]
    assert error.startswith(
        "revenium-ollama upload: error: the metering API refused the API key (HTTP 401: "
    )
    assert error.endswith("check REVENIUM_METERING_API_KEY. Nothing more was sent")
    assert wrong not in done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    assert len(api.received) <= 16  # what was in flight when the first refusal came
    assert api.records == [] and uploaded(ledger) == []


def test_without_a_key_nothing_is_sent(ledger: Path) -> None:
    done = cli("upload", "--ledger", str(ledger), env={})
    assert done.returncode == 1
    assert done.stderr == (
        "revenium-ollama upload: error: REVENIUM_METERING_API_KEY is not set: nothing can be "
        "uploaded (--dry-run counts what would go)\n"
    )
