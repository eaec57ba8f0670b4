"""Delivery with a spool: what cannot be delivered now is delivered later, by this process
or the next one, once each (real processes, the fake metering API, one spool directory)."""

from __future__ import annotations

import contextlib
import os
import signal
import textwrap
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import ollama

import revenium_ollama_transport as metering
from revenium_ollama_transport import ReveniumTransport
from revenium_ollama_transport._delivery import dispatcher
from revenium_ollama_transport._spool import Spool, SpooledRecord
from revenium_ollama_transport.testing import FakeMeteringAPI, OllamaSimulator

from ._caller import stored_ids
from ._polling import wait_until
from ._processes import run_python
from .conftest import API_KEY

CHILD = textwrap.dedent(
    """
    import sys, time
    import ollama
    import revenium_ollama_transport as metering
    client = ollama.Client(host=sys.argv[1])
    for _ in range(int(sys.argv[2])):
        client.chat(model="m", messages=[])
    # Stay until the spool's records, if any are expected, have been delivered again.
    deadline = time.monotonic() + 20
    while metering.stats().get("replayed", 0) < int(sys.argv[3]) and time.monotonic() < deadline:
        time.sleep(0.01)
    print(metering.stats(), flush=True)
    """
)


@contextlib.contextmanager
def restarted_delivery(api: FakeMeteringAPI, **settings: Any) -> Iterator[None]:
    """Delivery restarted with ``settings`` (the thread takes ``max_in_flight`` only as it
    starts); afterwards the API answers again, and the next test's thread starts with the
    defaults."""
    metering.configure(**settings)
    assert metering.shutdown(5.0)
    try:
        yield
    finally:
        api.set_mode("normal")
        metering.flush(10.0)
        metering.configure(reset=True)
        metering.shutdown(10.0)


def spooled_lines(directory: Path, pattern: str = "*.jsonl*") -> int:
    """Records in the spool's files (waiting and claimed, by default); 0 when a file was
    claimed or finished between the listing and its reading (wait for another look)."""
    lines = 0
    for path in directory.glob(pattern):
        try:
            lines += path.read_bytes().count(b"\n")
        except FileNotFoundError:
            return 0
    return lines


def child(
    tmp_path: Path,
    sim: OllamaSimulator,
    api: FakeMeteringAPI,
    calls: int,
    replays: int = 0,
    **env: str,
) -> str:
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    done = run_python(
        script,
        {
            "REVENIUM_METERING_API_KEY": API_KEY,
            "REVENIUM_METERING_BASE_URL": api.url,
            "REVENIUM_SPOOL_DIR": str(tmp_path / "spool"),
            **env,
        },
        sim.url,
        str(calls),
        str(replays),
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_records_left_at_exit_are_delivered_by_the_next_process_once(
    tmp_path: Path, sim: OllamaSimulator, api: FakeMeteringAPI
) -> None:
    api.set_mode("hang")
    child(tmp_path, sim, api, 12, REVENIUM_SHUTDOWN_TIMEOUT="0.5")
    assert api.records == []
    assert any((tmp_path / "spool").rglob("*")), "nothing was spooled"
    api.set_mode("normal")
    child(tmp_path, sim, api, 3, replays=12)
    stored = api.wait_for_records(15, timeout=20.0)
    assert len({r["transactionId"] for r in stored}) == 15
    assert len(stored) == 15


def test_an_outage_spools_and_the_same_process_delivers_once_it_is_over(
    tmp_path: Path, sim: OllamaSimulator, metered: FakeMeteringAPI
) -> None:
    metering.configure(spool_dir=str(tmp_path / "spool"), max_attempts=2, max_retry_wait=0.05)
    metered.set_mode("down")
    client = ollama.Client(host=sim.url, transport=ReveniumTransport())
    for _ in range(5):
        client.chat(model="m", messages=[])
    wait_until(lambda: metering.stats().get("spooled", 0) >= 5, 20.0, "5 records spooled")
    assert metering.stats().get("dropped.retries_exhausted", 0) == 0
    metered.set_mode("normal")
    stored = metered.wait_for_records(5, timeout=30.0)
    assert len({r["transactionId"] for r in stored}) == 5
    wait_until(lambda: metering.stats().get("replayed", 0) >= 5, 10.0, "5 replayed")


def test_without_a_spool_an_outage_drops_and_counts(
    sim: OllamaSimulator, metered: FakeMeteringAPI
) -> None:
    metering.configure(spool_dir="off", max_attempts=2, max_retry_wait=0.05)
    metered.set_mode("down")
    ollama.Client(host=sim.url, transport=ReveniumTransport()).chat(model="m", messages=[])
    wait_until(lambda: metering.stats().get("dropped.retries_exhausted", 0) == 1, 20.0, "dropped")
    assert metering.stats().get("spooled", 0) == 0


KILLED_CHILD = textwrap.dedent(
    """
    import os, signal, sys, time
    from pathlib import Path
    import ollama
    import revenium_ollama_transport as metering
    client = ollama.Client(host=sys.argv[1])
    calls = int(sys.argv[2])
    for _ in range(calls):
        client.chat(model="m", messages=[])
    spool = Path(os.environ["REVENIUM_SPOOL_DIR"])
    deadline = time.monotonic() + 20
    # Wait (a condition, not a delay) for the records to be written ahead, then die hard.
    while time.monotonic() < deadline:
        lines = sum(p.read_bytes().count(b"\\n") for p in spool.glob("*.claimed-*"))
        if lines >= calls:
            break
        time.sleep(0.01)
    os.kill(os.getpid(), signal.SIGKILL)
    """
)


def test_records_written_ahead_survive_sigkill(
    tmp_path: Path, sim: OllamaSimulator, api: FakeMeteringAPI
) -> None:
    api.set_mode("hang")  # nothing can be delivered before the kill
    script = tmp_path / "killed.py"
    script.write_text(KILLED_CHILD)
    env = {
        "REVENIUM_METERING_API_KEY": API_KEY,
        "REVENIUM_METERING_BASE_URL": api.url,
        "REVENIUM_SPOOL_DIR": str(tmp_path / "spool"),
    }
    killed = run_python(script, env, sim.url, "8")
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert api.records == []
    api.set_mode("normal")
    child(tmp_path, sim, api, 1, replays=8)  # a new process with the same spool
    stored = api.wait_for_records(9, timeout=20.0)
    assert len({r["transactionId"] for r in stored}) == 9


def test_an_outage_is_probed_one_request_at_a_time_and_loses_nothing(
    tmp_path: Path, sim: OllamaSimulator, metered: FakeMeteringAPI
) -> None:
    settings = {"max_attempts": 3, "max_retry_wait": 0.05, "max_in_flight": 4}
    with restarted_delivery(metered, spool_dir=str(tmp_path / "spool"), **settings):
        metered.set_mode("down")
        client = ollama.Client(host=sim.url, transport=ReveniumTransport())
        for _ in range(40):
            client.chat(model="m", messages=[])
        wait_until(lambda: metering.stats().get("spooled", 0) >= 40, 20.0, "40 records parked")
        attempts_in_outage = len(metered.received)
        # Without the shared state each record would try 3 times: 120 requests. With it:
        # the first requests in flight (4) fail, the outage is declared, and the rest wait
        # in the spool while the replay probes one request at a time.
        assert attempts_in_outage < 20, attempts_in_outage
        metered.set_mode("normal")
        stored = metered.wait_for_records(40, timeout=30.0)
        assert len({r["transactionId"] for r in stored}) == 40
        assert metering.stats().get("dropped.retries_exhausted", 0) == 0


def test_records_delivered_before_an_outage_is_declared_are_not_sent_again(
    tmp_path: Path, sim: OllamaSimulator, metered: FakeMeteringAPI
) -> None:
    # Twelve requests held, then all dropped at once: a few of the retries get through before
    # the outage is declared, the rest wait in the spool. The spool file of the batch must
    # then hold only the rest, or the replay sends the delivered ones a second time.
    spool = tmp_path / "spool"
    metering.configure(spool_dir=str(spool))
    metered.set_mode("hang")
    client = ollama.Client(host=sim.url, transport=ReveniumTransport())
    for _ in range(12):
        client.chat(model="m", messages=[])
    metered.wait_for_received(12, timeout=10.0)
    metered.set_mode("normal")
    stored = metered.wait_for_records(12, timeout=30.0)
    wait_until(lambda: not list(spool.glob("*.jsonl*")), 10.0, "an empty spool")
    answered = Counter(
        r.record["transactionId"] for r in metered.received if r.status == 201 and r.record
    )
    assert set(answered) == {r["transactionId"] for r in stored}
    assert max(answered.values()) == 1, answered
    stats = metering.stats()
    assert stats["delivered"] == 12, stats  # replayed ones included
    assert stats.get("replayed", 0) == stats.get("spooled", 0), stats


def test_the_first_probe_of_an_outage_waits_for_the_retry_after_that_declared_it(
    tmp_path: Path, sim: OllamaSimulator, metered: FakeMeteringAPI
) -> None:
    spool = tmp_path / "spool"
    with restarted_delivery(metered, spool_dir=str(spool), max_attempts=1, max_in_flight=1):
        metered.set_mode("unavailable", status=503, retry_after=3)
        client = ollama.Client(host=sim.url, transport=ReveniumTransport())
        for _ in range(6):
            client.chat(model="m", messages=[])
        wait_until(lambda: spooled_lines(spool) == 6 and dispatcher._outage, 10.0, "an outage")
        last_refused = max(r.time for r in metered.received)
        metered.set_mode("normal")  # a probe sent now would get through
        metered.wait_for_records(6, timeout=30.0)
        first_stored = min(r.time for r in metered.received if r.status == 201)
        assert first_stored - last_refused >= 2.5, first_stored - last_refused


def test_a_refused_key_keeps_records_until_the_key_changes(
    tmp_path: Path, sim: OllamaSimulator, metered: FakeMeteringAPI
) -> None:
    metering.configure(spool_dir=str(tmp_path / "spool"), api_key="hak_wrong_key")
    client = ollama.Client(host=sim.url, transport=ReveniumTransport())
    for _ in range(6):
        client.chat(model="m", messages=[])
    wait_until(lambda: metering.stats().get("spooled", 0) >= 6, 20.0, "6 records kept")
    refused = len(metered.received)
    assert metered.records == []
    assert refused <= 6  # each at most once: no retry loop against a refused key
    assert metering.stats().get("failed.401", 0) == 0
    metering.configure(api_key=API_KEY)
    stored = metered.wait_for_records(6, timeout=20.0)
    assert len({r["transactionId"] for r in stored}) == 6


DRAINER = textwrap.dedent(
    """
    import os, sys, time
    from pathlib import Path
    import ollama
    import revenium_ollama_transport as metering
    client = ollama.Client(host=sys.argv[1])
    for _ in range(int(sys.argv[2])):
        # The call's transaction id, to count records by id.
        print(getattr(client.chat(model="m", messages=[]), "_revenium_transaction_id", None))
    if sys.argv[3] == "drain":  # stay until the shared spool is empty
        spool = Path(os.environ["REVENIUM_SPOOL_DIR"])
        deadline = time.monotonic() + 30
        while any(spool.glob("*.jsonl*")) and time.monotonic() < deadline:
            time.sleep(0.02)
    """
)


def test_four_processes_share_one_spool_while_the_api_flaps(
    tmp_path: Path, sim: OllamaSimulator, api: FakeMeteringAPI
) -> None:
    script = tmp_path / "worker.py"
    script.write_text(DRAINER)
    env = {
        "REVENIUM_METERING_API_KEY": API_KEY,
        "REVENIUM_METERING_BASE_URL": api.url,
        "REVENIUM_SPOOL_DIR": str(tmp_path / "spool"),
        "REVENIUM_SHUTDOWN_TIMEOUT": "1",
    }
    api.set_mode("down")
    with ThreadPoolExecutor(4) as pool:
        workers = [pool.submit(run_python, script, env, sim.url, "25", "no") for _ in range(4)]
        api.wait_for_received(8, timeout=20.0)  # the workers are failing against it
        api.set_mode("normal")
        api.wait_for_records(10, timeout=20.0)
        api.set_mode("down")
        seen = len(api.received)
        api.wait_for_received(seen + 4, timeout=20.0)
        api.set_mode("normal")
        for worker in workers:
            assert worker.result().returncode == 0, worker.result().stderr
    made = {i for worker in workers for i in worker.result().stdout.split()}
    assert len(made) == 100
    last = run_python(script, env, sim.url, "0", "drain")  # delivers what they left
    assert last.returncode == 0, last.stderr
    stored = api.wait_for_records(100, timeout=30.0)
    assert len({r["transactionId"] for r in stored}) == 100
    assert stored_ids(api) == made  # every call's record, each once
    assert not list((tmp_path / "spool").glob("*.jsonl*"))


def test_a_process_that_makes_no_call_still_delivers_what_it_finds_spooled(
    tmp_path: Path, sim: OllamaSimulator, api: FakeMeteringAPI
) -> None:
    api.set_mode("hang")
    child(tmp_path, sim, api, 4, REVENIUM_SHUTDOWN_TIMEOUT="0.5")
    assert api.records == []
    api.set_mode("normal")
    script = tmp_path / "idle.py"
    script.write_text(DRAINER)
    env = {
        "REVENIUM_METERING_API_KEY": API_KEY,
        "REVENIUM_METERING_BASE_URL": api.url,
        "REVENIUM_SPOOL_DIR": str(tmp_path / "spool"),
    }
    idle = run_python(script, env, sim.url, "0", "drain")
    assert idle.returncode == 0, idle.stderr
    assert len({r["transactionId"] for r in api.wait_for_records(4, timeout=20.0)}) == 4


def test_a_spool_or_key_configured_at_run_time_is_delivered_without_another_call(
    tmp_path: Path, sim: OllamaSimulator, metered: FakeMeteringAPI
) -> None:
    # Two earlier processes each left 4 records in a spool of their own (the API hung
    # until they exited).
    spools = [tmp_path / "first", tmp_path / "second"]
    metered.set_mode("hang")
    for spool in spools:
        child(
            tmp_path,
            sim,
            metered,
            4,
            REVENIUM_SHUTDOWN_TIMEOUT="0.5",
            REVENIUM_SPOOL_DIR=str(spool),
        )
    metered.set_mode("normal")
    assert metered.records == []
    # This process's delivery thread runs, with no spool...
    metering.configure(spool_dir="off")
    ollama.Client(host=sim.url, transport=ReveniumTransport()).chat(model="m", messages=[])
    assert metering.flush(10.0)
    assert len(metered.wait_for_records(1)) == 1
    # ...then is given the first spool: its records go, with no call to set them off.
    metering.configure(spool_dir=str(spools[0]))
    assert len({r["transactionId"] for r in metered.wait_for_records(5, timeout=20.0)}) == 5
    # Without a key, the second spool's records stay; with one, they go.
    metering.configure(api_key=None, ledger="off", spool_dir=str(spools[1]))
    assert metering.flush(10.0)
    wait_until(lambda: spooled_lines(spools[1], "*.jsonl") == 4, 10.0, "4 records waiting")
    metering.configure(api_key=API_KEY)
    stored = metered.wait_for_records(9, timeout=20.0)
    assert len({r["transactionId"] for r in stored}) == 9
    assert metering.stats().get("dropped.no_api_key", 0) == 0  # none lost while key-less
    for spool in spools:
        wait_until(lambda: not list(spool.glob("*.jsonl*")), 10.0, f"{spool.name} emptied")  # noqa: B023 - used at once


def test_without_a_key_the_spool_is_left_alone(
    tmp_path: Path, sim: OllamaSimulator, api: FakeMeteringAPI
) -> None:
    api.set_mode("hang")
    child(tmp_path, sim, api, 3, REVENIUM_SHUTDOWN_TIMEOUT="0.5")
    spooled = sorted(p.name for p in (tmp_path / "spool").glob("*.jsonl*"))
    assert spooled
    api.set_mode("normal")
    script = tmp_path / "idle.py"
    script.write_text(DRAINER)
    env = {"REVENIUM_SPOOL_DIR": str(tmp_path / "spool")}  # and no REVENIUM_METERING_API_KEY
    run_python(script, env, sim.url, "2", "no")
    remaining = list((tmp_path / "spool").glob("*.jsonl*"))
    assert sum(p.read_bytes().count(b"\n") for p in remaining) == 3  # kept, not dropped


def test_shutdown_gives_back_the_files_its_replay_had_claimed(
    tmp_path: Path, metered: FakeMeteringAPI
) -> None:
    directory = tmp_path / "spool"
    earlier = Spool.open(str(directory), 10.0)
    assert earlier is not None
    for file in range(10):
        earlier.put([SpooledRecord(f"tx-{file}-{n}", b'{"n": 1}') for n in range(2)])
    earlier.close()  # as a process that ended, leaving 10 files of 2 records
    assert metering.shutdown(5.0)  # the thread started next replays the spool first thing
    metering.configure(spool_dir=str(directory))
    metered.latency = 1.0
    metered.respond_with(201, times=20)  # stored, whatever the (made up) records say
    dispatcher.start_if_spooled()
    # The replay sends each file's first record alone, then the second: shut down once the
    # first ones are delivered, the second ones a second away from their answers.
    wait_until(lambda: metering.stats().get("replayed", 0) >= 10, 10.0, "first records")
    assert metering.shutdown(5.0)
    assert metering.stats().get("replayed", 0) == 10
    # Every file waiting again, none left claimed by an owner that lives on with this
    # process (metering restarts on the next call, with a new owner).
    assert not list(directory.glob("*.claimed-*"))
    assert len(list(directory.glob("*.jsonl"))) == 10, sorted(os.listdir(directory))


def test_records_keep_going_to_disk_while_the_api_holds_every_slot(
    tmp_path: Path, sim: OllamaSimulator, metered: FakeMeteringAPI
) -> None:
    # One slot, and room in memory for 10 records: the hanging API holds the slot, and
    # records written ahead wait in memory for it, up to queue_size; beyond that the oldest
    # of them wait in the spool instead (for the replay), so that later records still reach
    # the disk at once rather than wait unwritten in the queue.
    spool = tmp_path / "spool"
    with restarted_delivery(metered, spool_dir=str(spool), queue_size=10, max_in_flight=1):
        metered.set_mode("hang")
        client = ollama.Client(host=sim.url, transport=ReveniumTransport())
        for made in range(5, 65, 5):
            for _ in range(5):
                client.chat(model="m", messages=[])
            wait_until(lambda: spooled_lines(spool) >= made, 5.0, f"{made} records on disk")  # noqa: B023 - used at once
        assert metering.stats().get("dropped.queue_full", 0) == 0
        metered.set_mode("normal")
        stored = metered.wait_for_records(60, timeout=30.0)
        assert len({r["transactionId"] for r in stored}) == 60


def test_a_shutdown_while_every_slot_is_held_gives_every_file_back_in_time(
    tmp_path: Path, sim: OllamaSimulator, metered: FakeMeteringAPI
) -> None:
    # The exit deadline passes while the thread waits for a slot the hanging API holds:
    # it must still cancel the request in flight and give every file back (the next
    # process sends only what was not delivered), not sleep until the thread is abandoned.
    spool = tmp_path / "spool"
    with restarted_delivery(metered, spool_dir=str(spool), max_in_flight=1):
        metered.set_mode("hang")
        client = ollama.Client(host=sim.url, transport=ReveniumTransport())
        for _ in range(5):
            client.chat(model="m", messages=[])
        wait_until(lambda: len(metered.received) >= 1, 5.0, "the request the API holds")
        wait_until(lambda: spooled_lines(spool) >= 5, 5.0, "5 records on disk")
        assert not metering.shutdown(0.2)  # not delivered: the API still holds one
        assert dispatcher._thread is None  # the thread ended; it was not given up on
        assert metering.stats().get("dropped.shutdown", 0) == 0
        assert not list(spool.glob("*.claimed-*")), sorted(os.listdir(spool))
        assert spooled_lines(spool, "*.jsonl") == 5
