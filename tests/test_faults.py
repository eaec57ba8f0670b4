"""Fault injection with real processes: a caller process (``tests/_caller.py``, the real
``ollama`` client metered by the import) calls the Ollama simulator at a steady rate while
the fake metering API, over 127.0.0.1, refuses connections, answers 503 or 429, refuses the
key, or hangs; or while the caller exits, is terminated or is killed. Records are counted in
(the calls the caller logged, by transaction id) and out (what the API stored, and every
request it received for each id).
"""

from __future__ import annotations

import itertools
import signal
import statistics
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from revenium_ollama_transport.testing import FakeMeteringAPI, OllamaSimulator

from ._caller import Caller, CallLog, loss, requests_per_id, stored_ids
from .conftest import API_KEY

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")

RATE = 100.0  # calls per second: a busy application
# The caller's records leave through 64 delivery slots: more than that many calls while the
# API does not answer takes the delivery thread past a full set of slots.
MORE_THAN_THE_SLOTS = 200


@pytest.fixture
def slow_api(api: FakeMeteringAPI) -> Iterator[FakeMeteringAPI]:
    """The fake API answering after 20 ms, as a remote one."""
    api.latency = 0.02
    yield api
    api.set_mode("normal")


def environment(api: FakeMeteringAPI, tmp_path: Path, **more: str) -> dict[str, str]:
    return {
        "REVENIUM_METERING_API_KEY": API_KEY,
        "REVENIUM_METERING_BASE_URL": api.url,
        "REVENIUM_SPOOL_DIR": str(tmp_path / "spool"),
        **more,
    }


def spooled(tmp_path: Path) -> list[Path]:
    return list((tmp_path / "spool").glob("*.jsonl*"))


def drain(tmp_path: Path, sim: OllamaSimulator, env: dict[str, str]) -> None:
    """A new process with the same spool, making no call: it delivers what it finds there."""
    with Caller(tmp_path, sim.url, env, calls=0, drain=True, name="drainer") as drainer:
        assert drainer.wait(60) == 0, drainer.errors
    assert not spooled(tmp_path), "the new process left records in the spool"


def wait_until_caught_up(
    caller: Caller, api: FakeMeteringAPI, since: float, timeout: float
) -> None:
    """Waits until the caller's records reach the API as they are made again: every call
    that ended over a second ago, the newest of them after ``since``, is stored. (What a
    process has in its spool when it exits is for the next process to deliver.)"""
    deadline = time.monotonic() + timeout
    while True:
        settled = [call for call in caller.calls().calls if call.ended < time.time() - 1.0]
        stored = {record["transactionId"] for record in api.records}
        if (
            settled
            and settled[-1].ended > since
            and all(c.transaction_id in stored for c in settled)
        ):
            return
        missing = sum(1 for c in settled if c.transaction_id not in stored)
        assert time.monotonic() < deadline, f"{missing} of {len(settled)} calls not stored"
        time.sleep(0.1)


def durations(log: CallLog, start: float, end: float) -> list[float]:
    """How long the calls that ended between ``start`` and ``end`` (time.time()) took."""
    return [call.duration for call in log.calls if start <= call.ended < end]


def assert_not_slowed(
    log: CallLog, before: tuple[float, float], during: tuple[float, float]
) -> None:
    """The calls made during a fault were about as fast as those before: metering never
    makes a call wait on the metering API. Generous: a loaded machine is not a slowdown."""
    assert not log.failures, log.failures[:3]
    usual = statistics.median(durations(log, *before))
    faulty = durations(log, *during)
    assert len(faulty) >= 50, len(faulty)
    assert statistics.median(faulty) < usual + 0.02, (usual, statistics.median(faulty))
    assert max(faulty) < 2.0, max(faulty)  # far below a metering request's 10 s timeout


# --- the API down: refused, then 503, then back ----------------------------------------


def test_an_outage_of_30_s_under_load_loses_nothing_and_is_probed_not_stormed(
    tmp_path: Path, sim: OllamaSimulator, api: FakeMeteringAPI
) -> None:
    with Caller(tmp_path, sim.url, environment(api, tmp_path), rate=RATE) as caller:
        api.wait_for_records(100, timeout=30.0)
        outage = time.time()
        api.stop_listening()  # connections refused, as a server that is gone
        time.sleep(15.0)  # the outage's length, not a wait for something to happen
        api.set_mode("unavailable")
        api.resume_listening()  # every request answered 503
        time.sleep(15.0)
        answered_503 = [r for r in api.received if r.status == 503]
        api.set_mode("normal")
        back = time.time()
        wait_until_caught_up(caller, api, back, timeout=90.0)
        assert caller.stop(timeout=30.0) == 0, caller.errors
        log = caller.calls()
        stats = caller.stats()

    assert len(log.calls) >= RATE * 30  # the load went on through the outage
    assert not spooled(tmp_path)
    assert stored_ids(api) == set(log.ids)  # every record, each stored once
    # A circuit, not a storm: while the API answered 503, it was probed one request at a
    # time (each probe retried a few times, and backing off) instead of each of the ~1,500
    # records made meanwhile trying on its own.
    assert len(answered_503) <= 40, len(answered_503)
    sent = requests_per_id(api.received)
    assert sum(sent.values()) <= len(sent) + 40, sent.most_common(3)
    assert sum(1 for count in sent.values() if count > 1) <= 10, sent.most_common(12)
    # Refused connections do not reach the API to be counted: the retries tell.
    assert stats.get("retried", 0) <= 60, stats
    assert stats.get("dropped.retries_exhausted", 0) == 0, stats
    assert_not_slowed(log, before=(0.0, outage), during=(outage, back))


# --- the caller exits, is terminated, or is killed, while the API hangs ------------------


@pytest.mark.parametrize("ending", ["exit", "SIGTERM", "SIGKILL"])
def test_what_a_process_leaves_is_delivered_by_the_next_one(
    tmp_path: Path, sim: OllamaSimulator, slow_api: FakeMeteringAPI, ending: str
) -> None:
    api = slow_api
    env = environment(api, tmp_path, REVENIUM_SHUTDOWN_TIMEOUT="1")
    with Caller(tmp_path, sim.url, env, rate=RATE) as caller:
        api.wait_for_records(50, timeout=30.0)
        # The API accepts connections and never answers: all 64 delivery slots are taken
        # by requests that wait, and records keep coming.
        api.set_mode("hang")
        hang = time.time()
        made = len(caller.calls().calls)
        caller.wait_for_calls(made + MORE_THAN_THE_SLOTS, timeout=30.0)
        ended = time.time()
        if ending == "exit":
            assert caller.stop(timeout=30.0) == 0, caller.errors
        else:
            caller.send_signal(getattr(signal, ending))
            assert caller.wait(timeout=30.0) == -getattr(signal, ending), caller.errors
        # Gone within REVENIUM_SHUTDOWN_TIMEOUT (1 s) and the interpreter's own exit, though
        # the API still holds 64 requests: what is left waits in the spool.
        assert time.time() - ended < 10.0
    log = caller.calls()
    assert_not_slowed(log, before=(0.0, hang), during=(hang, ended))
    left = b"".join(path.read_bytes() for path in spooled(tmp_path))
    api.set_mode("normal")
    drain(tmp_path, sim, env)

    stored = stored_ids(api)
    if ending == "exit":
        assert stored == set(log.ids)
    else:
        # A call under way when the signal came may have been metered and not logged.
        assert len(stored - set(log.ids)) <= 1
    kill = loss(log, stored, killed_at=ended)
    if ending == "SIGKILL":
        # Only what was not yet written ahead to the spool: the records of the last few
        # tens of ms (see benchmarks/bench_sigkill.py). Bounded here at 0.5 s worth of calls,
        # for a loaded machine; without write-ahead during the hang, all but the 64 records
        # in flight would be lost.
        lost = len(kill.lost)
        assert lost <= RATE * 0.5, f"{lost} lost, the oldest {kill.window:.3f} s before the kill"
    else:
        assert kill.lost == [], len(kill.lost)
    # Records sent twice went again from the next process, with the same Idempotency-Key
    # (stored_ids checked it), each because the killed or exiting process left it in the
    # spool: at most twice each.
    sent = requests_per_id(api.received)
    assert max(sent.values()) <= 2
    twice = [transaction_id for transaction_id, count in sent.items() if count == 2]
    assert all(transaction_id.encode() in left for transaction_id in twice), twice
    if ending == "SIGKILL":
        # The held requests: at most one set of slots. A batch's write-ahead file is left
        # whole, so a record of it answered before the kill can go again too (the README's
        # "at least once").
        first_status: dict[str, int | None] = {}
        for request in api.received:
            assert request.record is not None
            first_status.setdefault(str(request.record["transactionId"]), request.status)
        assert len([i for i in twice if first_status[i] is None]) <= 64
    else:
        # Only what was in the slots at the exit deadline (held, or its answer not yet
        # read): a partly delivered batch's file goes back holding only the rest.
        assert len(twice) <= 64


# --- the API pushes back: 429 with Retry-After, a refused key ----------------------------


def test_a_rate_limit_is_waited_out_as_retry_after_asks_and_nothing_is_lost(
    tmp_path: Path, sim: OllamaSimulator, api: FakeMeteringAPI
) -> None:
    with Caller(tmp_path, sim.url, environment(api, tmp_path), rate=RATE) as caller:
        api.wait_for_records(50, timeout=30.0)
        throttled = time.time()
        api.set_mode("unavailable", status=429, retry_after=1)
        time.sleep(4.0)  # the rate limit's length, not a wait for something to happen
        api.set_mode("normal")
        over = time.time()
        wait_until_caught_up(caller, api, over, timeout=60.0)
        assert caller.stop(timeout=30.0) == 0, caller.errors
    log = caller.calls()
    assert stored_ids(api) == set(log.ids)
    assert not spooled(tmp_path)
    received = api.received
    limited = [r for r in received if r.status == 429]
    # No record was sent again before its Retry-After had passed.
    for request in limited:
        assert request.record is not None
        again = [
            r.time
            for r in received
            if r.time > request.time
            and r.record is not None
            and r.record["transactionId"] == request.record["transactionId"]
        ]
        assert again, "a record answered 429 was never sent again"
        assert min(again) - request.time >= 0.9, min(again) - request.time
    # Nor was the API stormed: after the few requests already under way, the ~400 records
    # made meanwhile waited in the spool while one probe at a time waited out each
    # Retry-After (measured: 6 requests in the first 60 ms, then one a second).
    assert len(limited) <= 30, len(limited)
    settled_in = limited[0].time + 0.5
    for earlier, later in itertools.pairwise(limited):
        if later.time > settled_in:
            assert later.time - earlier.time >= 0.9, [r.time - limited[0].time for r in limited]
    assert_not_slowed(log, before=(0.0, throttled), during=(throttled, over))


def test_a_refused_key_under_load_is_one_error_no_retry_loop_and_keeps_every_record(
    tmp_path: Path, sim: OllamaSimulator, api: FakeMeteringAPI
) -> None:
    wrong_key = "hak_wrong_key_0123456789abcdef"
    env = environment(
        api, tmp_path, REVENIUM_METERING_API_KEY=wrong_key, REVENIUM_LOG_LEVEL="DEBUG"
    )
    with Caller(tmp_path, sim.url, env, rate=RATE) as caller:
        caller.wait_for_calls(MORE_THAN_THE_SLOTS, timeout=30.0)
        assert caller.stop(timeout=30.0) == 0, caller.errors
    log = caller.calls()
    assert not log.failures
    assert api.records == []
    # Refused, each record at most once: no retry loop against a key that is wrong.
    sent = requests_per_id(api.received)
    assert {r.status for r in api.received} == {401}
    assert max(sent.values()) == 1
    assert len(sent) <= 64, len(sent)
    # One clear error, and the key nowhere in the log (DEBUG shows every record).
    errors = [line for line in caller.errors.splitlines() if " ERROR " in line]
    assert len(errors) == 1, errors
    assert "401" in errors[0] and "REVENIUM_METERING_API_KEY" in errors[0], errors
    assert "metering record {" in caller.errors  # the debug lines were there to look at
    assert wrong_key not in caller.errors
    # Every record kept in the spool, and delivered by the next process with a good key.
    assert sum(p.read_bytes().count(b"\n") for p in spooled(tmp_path)) == len(log.calls)
    drain(tmp_path, sim, environment(api, tmp_path))
    assert stored_ids(api) == set(log.ids)
