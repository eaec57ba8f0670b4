"""A caller process for fault tests and the SIGKILL measurement.

Run as a script, it is an application: the real ``ollama`` client, metered because the
package is imported, calling the Ollama simulator at a steady rate (or as fast as it can)
until its stdin is closed or it has made ``--calls`` calls; then, with ``--drain``, it waits
until the spool holds no records (delivered, its own and those left by earlier processes),
and it exits normally. As each call returns it logs the call's transaction id (the
``_revenium_transaction_id`` the package tags responses with), so that a test counts
records in (calls made) and out (records the fake metering API stored) by id, even for a
process killed with SIGKILL.

    python tests/_caller.py OLLAMA_URL LOG [--rate CALLS_PER_S] [--calls N] [--drain]
                            [--in-process]

``--in-process``: the simulator answers once, over HTTP; every call then gets that answer
from ``httpx.MockTransport``, in the process, so that a flat-out caller goes as fast as the
client and the metering allow, loading the delivery thread as hard as it can be loaded.

A log line is ``<transaction id> <time.time() at the end> <duration in s>``, or
``FAILED <error>`` for a call that raised; the log is a file mapped into memory, padded
with NUL bytes (see ``_MappedLog``). At exit, after the package's own exit handler has
delivered what it could, the last line on stdout is ``stats()`` as JSON.

Imported, it gives tests and benchmarks ``Caller`` (such a process) and ``read_log``.
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from revenium_ollama_transport.testing import FakeMeteringAPI, ReceivedMetering

SCRIPT = Path(__file__)


@dataclass(frozen=True)
class Call:
    transaction_id: str
    ended: float  # time.time() when the call returned
    duration: float  # seconds the call took


@dataclass(frozen=True)
class CallLog:
    calls: list[Call]
    failures: list[str]

    @property
    def ids(self) -> list[str]:
        return [call.transaction_id for call in self.calls]


def read_log(path: Path) -> CallLog:
    """The calls logged so far (a line cut short by a kill is left out)."""
    import mmap

    try:
        with path.open("rb") as file, mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as log:
            end = log.find(b"\0")
            text = log[: end if end >= 0 else len(log)].decode()
    except (FileNotFoundError, ValueError):  # ValueError: not yet sized, nothing to map
        return CallLog([], [])
    calls: list[Call] = []
    failures: list[str] = []
    for line in text.splitlines(keepends=True):
        if not line.endswith("\n"):
            break
        if line.startswith("FAILED "):
            failures.append(line[len("FAILED ") :].strip())
            continue
        transaction_id, ended, duration = line.split()
        calls.append(Call(transaction_id, float(ended), float(duration)))
    return CallLog(calls, failures)


@dataclass(frozen=True)
class Loss:
    """Calls a killed process logged whose records no process delivered."""

    lost: list[Call]
    calls: int  # calls logged
    rate: float  # calls per second, as made
    killed_at: float  # time.time() just before the kill

    @property
    def window(self) -> float:
        """Seconds from the end of the oldest lost call to ``killed_at``; 0 if none lost."""
        return self.killed_at - min(call.ended for call in self.lost) if self.lost else 0.0


def loss(log: CallLog, stored: Iterable[str], killed_at: float) -> Loss:
    """What a kill at ``killed_at`` cost: ``stored`` are the transaction ids the API holds."""
    kept = set(stored)
    span = log.calls[-1].ended - log.calls[0].ended if log.calls else 0.0
    return Loss(
        lost=[call for call in log.calls if call.transaction_id not in kept],
        calls=len(log.calls),
        rate=(len(log.calls) - 1) / span if span > 0 else 0.0,
        killed_at=killed_at,
    )


def requests_per_id(received: Iterable[ReceivedMetering]) -> Counter[str]:
    """How many requests the API received for each transaction id, whatever it answered."""
    return Counter(
        str(request.record["transactionId"])
        for request in received
        if request.record is not None and "transactionId" in request.record
    )


def stored_ids(api: FakeMeteringAPI) -> set[str]:
    """The ids the API stored, after checking that it would have stored each once anyway:
    every request for an id carried the id as its Idempotency-Key, and the same body."""
    ids = [record["transactionId"] for record in api.records]
    assert len(ids) == len(set(ids))
    bodies: dict[str, bytes] = {}
    for request in api.received:
        assert request.record is not None
        transaction_id = request.record["transactionId"]
        assert request.headers.get("idempotency-key") == transaction_id
        assert bodies.setdefault(transaction_id, request.body) == request.body
    return set(ids)


class Caller:
    """A caller process (this module as a script) started for a test or a benchmark; its
    log and output go to ``directory``. Killed on leaving a ``with`` block if still alive."""

    def __init__(
        self,
        directory: Path,
        ollama_url: str,
        env: Mapping[str, str],
        *,
        rate: float = 0.0,
        calls: int | None = None,
        drain: bool = False,
        in_process: bool = False,
        name: str = "caller",
    ) -> None:
        from ._processes import start_python  # here: as a script, this module has no package

        directory.mkdir(parents=True, exist_ok=True)
        self.log = directory / f"{name}.log"
        self.stdout = directory / f"{name}.out"
        self.stderr = directory / f"{name}.err"
        self.process = start_python(
            SCRIPT,
            env,
            ollama_url,
            str(self.log),
            f"--rate={rate}",
            *([] if calls is None else [f"--calls={calls}"]),
            *(["--drain"] if drain else []),
            *(["--in-process"] if in_process else []),
            stdout=self.stdout,
            stderr=self.stderr,
        )

    def calls(self) -> CallLog:
        return read_log(self.log)

    def wait_for_calls(self, count: int, timeout: float) -> CallLog:
        """Waits until ``count`` calls were logged; fails if the process ends first."""
        deadline = time.monotonic() + timeout
        while len((log := self.calls()).calls) < count:
            if self.process.poll() is not None:
                raise AssertionError(f"the caller ended ({self.process.returncode}): {self.errors}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(log.calls)} of {count} calls within {timeout} s")
            time.sleep(0.01)
        return log

    def stop(self, timeout: float) -> int:
        """Asks it to stop calling and exit normally; returns its exit status."""
        assert self.process.stdin is not None
        self.process.stdin.close()
        return self.process.wait(timeout)

    def send_signal(self, signum: int) -> None:
        self.process.send_signal(signum)

    def wait(self, timeout: float) -> int:
        return self.process.wait(timeout)

    @property
    def errors(self) -> str:
        """What it wrote to stderr (the package's log lines, a traceback)."""
        return self.stderr.read_text(errors="replace")

    def stats(self) -> dict[str, Any]:
        """``stats()`` as the process printed it at exit."""
        lines = self.stdout.read_text().splitlines()
        assert lines, f"no stats printed; stderr: {self.errors}"
        stats: dict[str, Any] = json.loads(lines[-1])
        return stats

    def __enter__(self) -> Caller:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.process.poll() is None:
            self.process.kill()
        try:
            self.process.wait(10)
        finally:
            if self.process.stdin is not None:
                self.process.stdin.close()


# --- the caller process ---------------------------------------------------------------


class _MappedLog:
    """The log as a file mapped into memory: a line written is in the page cache, and so
    survives a SIGKILL, without a system call. With a write() per call, a flat-out caller
    releases and retakes the GIL thousands of times a second, and was seen to keep the
    delivery thread from it for seconds at a time (a thread waiting for the GIL forces a
    hand-over only after 5 ms in which the GIL did not change hands, and a release and
    retake counts as a change): the measuring would change what it measures."""

    SIZE = 32 * 1024 * 1024  # 400,000 calls

    def __init__(self, path: Path) -> None:
        import mmap

        with path.open("wb") as file:
            file.truncate(self.SIZE)  # sparse: only the pages written take space
        with path.open("r+b") as file:
            self._map = mmap.mmap(file.fileno(), self.SIZE)
        self._at = 0

    def write(self, line: bytes) -> None:
        end = self._at + len(line)
        self._map[self._at : end] = line
        self._at = end


def _watch_stdin(stop: threading.Event) -> None:
    # The raw descriptor: a thread blocked in sys.stdin's buffered reader would hold its
    # lock when the interpreter finalizes, which aborts the process.
    while os.read(0, 4096):
        pass  # until EOF: the test closed the pipe
    stop.set()


def _replaying(ollama_url: str) -> Any:
    """A transport answering every request with the simulator's answer to one chat call."""
    import httpx

    answer = httpx.post(
        f"{ollama_url}/api/chat",
        json={"model": "qwen2.5:0.5b", "messages": [], "stream": False},
    )
    answer.raise_for_status()
    body, headers = answer.content, {"content-type": answer.headers["content-type"]}
    # A stream, not content: the body is read as it would be from a network transport.
    return httpx.MockTransport(
        lambda request: httpx.Response(200, headers=headers, stream=httpx.ByteStream(body))
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("ollama_url")
    parser.add_argument("log", type=Path)
    parser.add_argument("--rate", type=float, default=0.0, help="calls per second; 0: flat out")
    parser.add_argument("--calls", type=int, default=None, help="default: until stdin is closed")
    parser.add_argument("--drain", action="store_true", help="then wait for an empty spool")
    parser.add_argument("--in-process", action="store_true", help="answers replayed in-process")
    args = parser.parse_args()

    # Registered before the package is imported, so that it runs after the package's own
    # exit handler (atexit runs handlers last in, first out).
    def print_stats() -> None:
        print(json.dumps(sys.modules["revenium_ollama_transport"].stats()), flush=True)

    atexit.register(print_stats)
    import ollama

    import revenium_ollama_transport  # noqa: F401 - the import meters ollama

    stop = threading.Event()
    threading.Thread(target=_watch_stdin, args=(stop,), daemon=True).start()
    log = _MappedLog(args.log)
    messages = [{"role": "user", "content": "Why is the sky blue?"}]
    client = ollama.Client(host=args.ollama_url)
    if args.in_process:
        client = ollama.Client(host=args.ollama_url, transport=_replaying(args.ollama_url))
    interval = 1.0 / args.rate if args.rate > 0 else 0.0
    started = time.perf_counter()
    made = 0
    while not stop.is_set() and (args.calls is None or made < args.calls):
        if interval:
            # On a fixed schedule: a late call does not push the later ones back.
            delay = started + made * interval - time.perf_counter()
            if delay > 0 and stop.wait(delay):
                break
        began = time.perf_counter()
        try:
            response = client.chat(model="qwen2.5:0.5b", messages=messages)
        except Exception as exc:
            line = "FAILED " + f"{type(exc).__name__}: {exc}".replace("\n", " ") + "\n"
        else:
            took = time.perf_counter() - began
            transaction_id = response._revenium_transaction_id  # type: ignore[attr-defined]
            line = f"{transaction_id} {time.time():.6f} {took:.6f}\n"
        log.write(line.encode())
        made += 1
    if args.drain:
        spool = Path(os.environ["REVENIUM_SPOOL_DIR"])
        deadline = time.monotonic() + 60
        while any(spool.glob("*.jsonl*")) and time.monotonic() < deadline:
            time.sleep(0.02)


if __name__ == "__main__":
    main()
