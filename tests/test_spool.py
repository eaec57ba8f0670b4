"""The on-disk spool: round trip, age order, size bound, permissions, failures, and several
processes sharing one spool (real forked processes, synchronised with pipes, no sleeps)."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import stat
import sys
import traceback
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest

from revenium_ollama_transport._paths import APP_DIR
from revenium_ollama_transport._spool import Claim, Spool, SpooledRecord
from revenium_ollama_transport._stats import counters

LOGGER = "revenium_ollama_transport"

pytestmark = pytest.mark.timeout(30)

posix_only = pytest.mark.skipif(
    not hasattr(os, "fork") or sys.platform == "win32", reason="needs fork and flock"
)


def rec(i: int, pad: int = 0) -> SpooledRecord:
    body = orjson.dumps({"transactionId": f"tx-{i}", "n": i, "cost": 1.5, "pad": "x" * pad})
    return SpooledRecord(f"tx-{i}", body)


def open_spool(directory: Path, max_mb: float = 100.0) -> Spool:
    spool = Spool.open(str(directory), max_mb)
    assert spool is not None
    return spool


def ids(claims: list[Claim]) -> list[str]:
    return [r.transaction_id for c in claims for r in c.records]


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == LOGGER and r.levelno == logging.WARNING]


def fork(child: Callable[[], int]) -> int:
    """Runs ``child`` in a forked process, which exits with its return value."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 70
        try:
            code = child()
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(code)
    return pid


def exit_code(pid: int) -> int:
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


def reap(pids: list[int]) -> None:
    """Kills and waits for whichever of ``pids`` a failed test left running."""
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass


def test_round_trip(tmp_path: Path) -> None:
    spool = open_spool(tmp_path / "spool")
    odd = SpooledRecord("tx-odd", b'{ "spaced": [1, 2.50],  "s": "a\\nb" }')
    assert spool.put([rec(0), rec(1)]) == 0
    assert spool.put([odd]) == 0
    files, size = spool.size()
    assert files == 2 and size > 0
    age = spool.oldest_age()
    assert age is not None and age >= 0

    claims = spool.claim(10)
    assert [len(c.records) for c in claims] == [2, 1]
    assert ids(claims) == ["tx-0", "tx-1", "tx-odd"]
    assert claims[0].records[0] == rec(0)
    assert claims[1].records[0].body == odd.body  # byte for byte
    assert spool.size() == (2, size)  # claimed files still count
    assert spool.claim(10) == []  # nothing left unclaimed

    spool.release(claims[1])
    again = spool.claim(10)
    assert ids(again) == ["tx-odd"]
    spool.finish(claims[0])
    spool.finish(again[0])
    assert spool.size() == (0, 0)
    assert spool.oldest_age() is None
    assert spool.claim(10) == []


def test_age_order_across_files_and_release_keeps_place(tmp_path: Path) -> None:
    spool = open_spool(tmp_path)
    for i in range(5):
        spool.put([rec(i)])
    first = spool.claim(1)
    assert ids(first) == ["tx-0"]
    assert ids(spool.claim(2)) == ["tx-1", "tx-2"]
    spool.release(first[0])
    assert ids(spool.claim(1)) == ["tx-0"]  # back in its place, ahead of tx-3
    # Another spool on the same directory (another process, as far as it knows).
    other = open_spool(tmp_path)
    assert ids(other.claim(100)) == ["tx-3", "tx-4"]


def test_release_with_some_delivered_keeps_only_the_rest_in_its_place(tmp_path: Path) -> None:
    spool = open_spool(tmp_path)
    spool.put([rec(0), rec(1), rec(2)])
    spool.put([rec(3)])
    claim = spool.claim(1)[0]
    spool.release(claim, [rec(1)])  # tx-0 and tx-2 were delivered
    waiting_name = claim.path.name.partition(".claimed-")[0]
    assert min(p.name for p in tmp_path.glob("*.jsonl")) == waiting_name  # its age kept
    again = spool.claim(1)
    assert ids(again) == ["tx-1"]  # still ahead of the younger file, alone
    assert again[0].records[0] == rec(1)  # byte for byte
    assert not list(tmp_path.glob(".tmp-*"))
    spool.release(again[0], [])  # all delivered: gone
    assert ids(spool.claim(10)) == ["tx-3"]
    assert spool.size()[0] == 1


def test_size_bound_drops_oldest_unclaimed_and_counts(tmp_path: Path) -> None:
    one_file = len(b"".join(r.body for r in (rec(0, 900), rec(1, 900)))) + 100  # ~2 KB
    spool = open_spool(tmp_path, max_mb=2.5 * one_file / (1024 * 1024))
    assert spool.put([rec(0, 900), rec(1, 900)]) == 0
    assert spool.put([rec(2, 900), rec(3, 900)]) == 0
    assert spool.put([rec(4, 900), rec(5, 900)]) == 2  # the oldest file went
    assert spool.size()[0] == 2
    held = spool.claim(1)  # tx-2, tx-3: claimed files are not dropped
    assert ids(held) == ["tx-2", "tx-3"]
    assert spool.put([rec(6, 900), rec(7, 900)]) == 2  # tx-4, tx-5 went instead
    spool.finish(held[0])
    assert ids(spool.claim(100)) == ["tx-6", "tx-7"]


def test_writes_measure_the_spool_when_it_may_be_over_its_bound_or_once_a_second(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Measuring takes a stat() per file: after a long outage, thousands, too many for each
    # of the writes that come every few tens of ms (32 ms a write at 10,000 files, measured).
    one_file = len(b"".join(r.body for r in (rec(0, 900), rec(1, 900)))) + 100  # ~2 KB
    spool = open_spool(tmp_path, max_mb=4.5 * one_file / (1024 * 1024))
    measure = spool._entries
    measured: list[int] = []

    def counted() -> list[tuple[str, int, bool]]:
        measured.append(1)
        return measure()

    monkeypatch.setattr(spool, "_entries", counted)
    for i in range(0, 8, 2):
        assert spool.put([rec(i, 900), rec(i + 1, 900)]) == 0
    assert len(measured) == 1  # the first write; the others fit what it measured
    other = open_spool(tmp_path)  # another writer takes the spool over the bound
    other.put([rec(100, 900), rec(101, 900)])
    assert spool.put([rec(10)]) == 0  # within the bound as far as this writer knows
    assert len(measured) == 1
    monkeypatch.setattr("revenium_ollama_transport._spool.SIZE_CHECK_SECONDS", 0.0)
    assert spool.put([rec(11)]) == 2  # measured (a second has gone by): the oldest file goes
    assert len(measured) == 2


def test_permissions(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        spool = open_spool(tmp_path / "a" / "spool")
        spool.put([rec(0)])
    finally:
        os.umask(old)
    directory = tmp_path / "a" / "spool"
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert stat.S_IMODE((directory / "locks").stat().st_mode) == 0o700
    files = list(directory.glob("*.jsonl")) + list((directory / "locks").iterdir())
    assert len(files) == 2
    for path in files:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_existing_directory_loses_group_and_other_access(tmp_path: Path) -> None:
    directory = tmp_path / "shared"
    directory.mkdir()
    os.chmod(directory, 0o777)
    open_spool(directory)
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700


@pytest.mark.parametrize("setting", ["off", "OFF", " Off "])
def test_off_disables(setting: str, caplog: pytest.LogCaptureFixture) -> None:
    assert Spool.open(setting, 100) is None
    assert warnings_of(caplog) == []


def test_directory_that_cannot_be_created(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert Spool.open(str(blocker / "spool"), 100) is None
    [warning] = warnings_of(caplog)
    assert str(blocker / "spool") in warning.getMessage()


def test_unwritable_directory(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    directory = tmp_path / "ro"
    directory.mkdir()
    os.chmod(directory, 0o500)
    try:
        try:
            (directory / "probe").write_text("")
        except PermissionError:
            pass
        else:
            pytest.skip("chmod does not stop writes here (running as root?)")
        assert Spool.open(str(directory), 100) is None
        [warning] = warnings_of(caplog)
        assert str(directory) in warning.getMessage()
    finally:
        os.chmod(directory, 0o700)


def test_write_failure_returns_minus_one_with_one_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    spool = open_spool(tmp_path / "spool")
    shutil.rmtree(tmp_path / "spool")  # works as root too, unlike chmod
    assert spool.put([rec(0)]) == -1
    assert spool.put([rec(1)]) == -1
    assert len(warnings_of(caplog)) == 1
    assert spool.claim(10) == []
    assert spool.size() == (0, 0)


@pytest.mark.skipif(sys.platform in ("win32", "darwin"), reason="XDG is for the other POSIX")
def test_default_directory_honours_xdg_cache_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    for setting in (None, ""):
        spool = Spool.open(setting, 100)
        assert spool is not None
        assert spool.directory == tmp_path / "cache" / APP_DIR / "spool"
        spool.close()
    assert (tmp_path / "cache" / APP_DIR / "spool").is_dir()


def test_corrupt_file_is_skipped_counted_and_logged_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    spool = open_spool(tmp_path)
    corrupt = counters.get("dropped.spool_corrupt")
    (tmp_path / f"{1:020d}-x-000001.jsonl").write_bytes(b"\x00garbage\nnot json either\n")
    good = orjson.dumps({"id": "tx-a", "body": {"n": 1}}) + b"\n"
    (tmp_path / f"{2:020d}-x-000001.jsonl").write_bytes(good + b'{"id":"tx-b","bo')  # cut short
    spool.put([rec(0)])
    claims = spool.claim(100)
    assert ids(claims) == ["tx-a", "tx-0"]
    assert claims[0].records[0].body == b'{"n":1}'
    assert counters.get("dropped.spool_corrupt") - corrupt == 3
    assert len(warnings_of(caplog)) == 1
    for claim in claims:
        spool.release(claim)
    assert ids(spool.claim(100)) == ["tx-a", "tx-0"]
    assert counters.get("dropped.spool_corrupt") - corrupt == 3  # counted once
    assert len(warnings_of(caplog)) == 1


@posix_only
def test_processes_claiming_concurrently_share_without_overlap(tmp_path: Path) -> None:
    spool = open_spool(tmp_path / "spool")
    expected = set()
    for f in range(120):
        batch = [rec(f * 3 + k) for k in range(3)]
        spool.put(batch)
        expected |= {r.transaction_id for r in batch}
    spool.close()
    start_r, start_w = os.pipe()

    def worker(n: int) -> int:
        os.close(start_w)
        mine = open_spool(tmp_path / "spool")
        got: list[str] = []
        assert os.read(start_r, 1) == b"g"  # all start together
        for rounds in range(10_000):  # bounded: a bug must not leave a process spinning
            claims = mine.claim(1 + n % 2)
            if not claims:
                break
            for claim in claims:
                if rounds % 5 == 4:  # now and then give one back, for anyone to take
                    mine.release(claim)
                else:
                    got.extend(r.transaction_id for r in claim.records)
                    mine.finish(claim)
        else:
            return 71
        (tmp_path / f"out-{n}").write_bytes(orjson.dumps(got))
        return 0

    pids = [fork(lambda n=n: worker(n)) for n in range(4)]  # type: ignore[misc]
    try:
        os.close(start_r)
        os.write(start_w, b"g" * len(pids))
        os.close(start_w)
        codes = [exit_code(pid) for pid in pids]
    finally:
        reap(pids)
    assert codes == [0] * len(pids)
    results = [orjson.loads((tmp_path / f"out-{n}").read_bytes()) for n in range(len(pids))]
    every = [tid for got in results for tid in got]
    assert len(every) == len(set(every))  # none twice
    assert set(every) == expected  # none lost
    assert sum(1 for got in results if got) >= 2  # they really did share the work
    assert open_spool(tmp_path / "spool").size() == (0, 0)


@posix_only
@pytest.mark.parametrize("death", ["exit", "sigkill"])
def test_claims_of_a_dead_process_are_reclaimed(tmp_path: Path, death: str) -> None:
    spool = open_spool(tmp_path)
    for i in range(3):
        spool.put([rec(i)])
    claimed_r, claimed_w = os.pipe()
    go_r, go_w = os.pipe()

    def child() -> int:
        mine = open_spool(tmp_path)
        claims = mine.claim(100)
        os.write(claimed_w, str(len(ids(claims))).encode())
        os.read(go_r, 1)  # held until the parent has looked
        os._exit(0)  # no release, no close: as if it crashed

    pid = fork(child)
    try:
        assert os.read(claimed_r, 10) == b"3"
        assert spool.claim(100) == []  # alive: its claims are its own
        if death == "sigkill":
            os.kill(pid, signal.SIGKILL)
            assert exit_code(pid) == -signal.SIGKILL
        else:
            os.write(go_w, b"g")
            assert exit_code(pid) == 0
    finally:
        reap([pid])
    for fd in (claimed_r, claimed_w, go_r, go_w):
        os.close(fd)
    claims = spool.claim(100)
    assert ids(claims) == ["tx-0", "tx-1", "tx-2"]
    assert not any(tmp_path.glob("*.claimed-*")) or all(
        c.path.exists() for c in claims
    )  # only ours remain claimed
    assert len(list((tmp_path / "locks").iterdir())) == 1  # the dead one's lock is gone


@posix_only
def test_a_write_ahead_cut_short_by_death_keeps_its_whole_lines_and_counts_the_rest(
    tmp_path: Path,
) -> None:
    # A batch written ahead goes straight to its claimed name: if the process dies in the
    # middle of the write, the whole lines are delivered later and the cut one counted.
    spool = open_spool(tmp_path)
    corrupt = counters.get("dropped.spool_corrupt")
    written_r, written_w = os.pipe()

    def child() -> int:
        mine = open_spool(tmp_path)
        claim, _ = mine.put_claimed([rec(0), rec(1)])
        assert claim is not None and claim.path.name.partition(".claimed-")[2]
        data = claim.path.read_bytes()
        claim.path.write_bytes(data[: len(data) - 5])  # as a write stopped part way
        os.write(written_w, b"w")
        os.kill(os.getpid(), signal.SIGKILL)
        return 0

    pid = fork(child)
    try:
        assert os.read(written_r, 1) == b"w"
        assert exit_code(pid) == -signal.SIGKILL
    finally:
        reap([pid])
    os.close(written_r)
    os.close(written_w)
    claims = spool.claim(100)
    assert ids(claims) == ["tx-0"]
    assert counters.get("dropped.spool_corrupt") - corrupt == 1
    assert not any(tmp_path.glob(".tmp-*"))  # nothing was written under another name


@posix_only
def test_forked_child_does_not_take_its_live_parents_claims(tmp_path: Path) -> None:
    spool = open_spool(tmp_path)
    for i in range(4):
        spool.put([rec(i)])
    held = spool.claim(2)
    assert ids(held) == ["tx-0", "tx-1"]

    def child() -> int:
        for claim in held:  # not the child's to finish or release
            spool.finish(claim)
            spool.release(claim)
        claims = spool.claim(100)  # the inherited Spool, now a different owner
        (tmp_path / "out").write_bytes(orjson.dumps(ids(claims)))
        for claim in claims:
            spool.finish(claim)
        return 0

    assert exit_code(fork(child)) == 0
    assert orjson.loads((tmp_path / "out").read_bytes()) == ["tx-2", "tx-3"]
    assert all(claim.path.exists() for claim in held)
    # The child closed its copy of the lock and exited: the parent still holds its claims.
    assert open_spool(tmp_path).claim(100) == []
    for claim in held:
        spool.finish(claim)
    assert spool.size() == (0, 0)
