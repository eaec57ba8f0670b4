"""Helpers of the ``revenium-ollama`` tests: synthetic ledger rows, and the command run as a
user runs it (a fresh interpreter, ``python -m revenium_ollama_transport``)."""

from __future__ import annotations

import contextlib
import queue
import subprocess
import sys
import threading
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import revenium_ollama_transport as metering
from revenium_ollama_transport import _ledger
from revenium_ollama_transport._record import MeteringRecord, iso_utc
from revenium_ollama_transport._stats import counters

from ._processes import clean_environment

# 2025-05-01T00:00:00Z: synthetic calls start here, a minute apart.
T0 = 1_746_057_600.0
NATIVE_TIMINGS = {
    "total_duration": 312_345_678,
    "load_duration": 12_345_678,
    "prompt_eval_duration": 45_678_901,
    "eval_duration": 234_567_890,
    "prompt_eval_cached_count": 0,
}


def record(
    i: int,
    *,
    model: str = "llama3.2:latest",
    started: float | None = None,
    duration_ms: int = 300,
    ttft_ms: int | None = 50,
    input_tokens: int = 26,
    output_tokens: int = 5,
    stop: str = "END",
    error_code: int | None = None,
    operation: str = "CHAT",
    timings: Mapping[str, int] | None = NATIVE_TIMINGS,
    **attribution: Any,
) -> MeteringRecord:
    """A record as ``build_record`` makes them; ``attribution``: wire fields such as
    ``organizationName`` or ``subscriber``."""
    start = T0 + 60 * i if started is None else started
    wire: dict[str, Any] = {
        "transactionId": f"tx-{i:06d}",
        "model": model,
        "provider": "OLLAMA",
        "modelSource": "OLLAMA",
        "middlewareSource": "PYTHON",
        "costType": "AI",
        "operationType": operation,
        "isStreamed": True,
        "requestTime": iso_utc(start),
        "responseTime": iso_utc(start + duration_ms / 1000),
        "requestDuration": duration_ms,
        "stopReason": stop,
        "inputTokenCount": input_tokens,
        "outputTokenCount": output_tokens,
        "totalTokenCount": input_tokens + output_tokens,
        "completionStartTime": iso_utc(start + (ttft_ms or duration_ms) / 1000),
    }
    if ttft_ms is not None:
        wire["timeToFirstToken"] = ttft_ms
    if error_code is not None:
        wire["errorCode"] = error_code
        wire["errorReason"] = f"HTTP {error_code}"
    wire.update(attribution)
    details: dict[str, Any] = {"route": "/api/chat", "host": "http://127.0.0.1:11434"}
    details.update(timings or {})
    return MeteringRecord(wire=wire, details=details)


def fill(path: Path, records: Sequence[MeteringRecord], sent_live: bool = False) -> None:
    connection = _ledger.connect(path)
    try:
        rows = [_ledger.row(r, sent_live=sent_live, written_at=T0) for r in records]
        _ledger.insert(connection, rows)
    finally:
        connection.close()


@contextlib.contextmanager
def metering_into(path: Path) -> Iterator[Path]:
    """Calls metered in this process go to the ledger at ``path`` (no API key: only there)."""
    assert metering.flush(10.0)
    counters.reset()
    metering.configure(reset=True, ledger="on", ledger_path=str(path))
    try:
        yield path
    finally:
        metering.flush(10.0)
        metering.configure(reset=True)


COMMAND = (sys.executable, "-m", "revenium_ollama_transport")


def cli(
    *args: str, env: Mapping[str, str] | None = None, timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    """Runs the command to its end; the caller checks the status."""
    return subprocess.run(
        [*COMMAND, *args],
        env=clean_environment(env or {}),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


class Running:
    """The command running in the background, its output lines read by threads."""

    def __init__(self, *args: str, env: Mapping[str, str] | None = None) -> None:
        self.process = subprocess.Popen(
            [*COMMAND, *args],
            env=clean_environment(env or {}),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            bufsize=1,
        )
        self.stdout: queue.Queue[str] = queue.Queue()
        self.stderr: queue.Queue[str] = queue.Queue()
        self.stderr_lines: list[str] = []
        assert self.process.stdout is not None and self.process.stderr is not None
        pipes = ((self.process.stdout, self.stdout), (self.process.stderr, self.stderr))
        for stream, lines in pipes:
            threading.Thread(target=_pump, args=(stream, lines), daemon=True).start()

    def line(self, timeout: float = 10.0) -> str:
        """The next stdout line (without its newline); fails after ``timeout``."""
        try:
            return self.stdout.get(timeout=timeout).rstrip("\n")
        except queue.Empty:
            message = f"no output line within {timeout}s; stderr: {self.errors()}"
            raise AssertionError(message) from None

    def line_within(self, timeout: float) -> str | None:
        """The next stdout line if one comes within ``timeout``, else None."""
        try:
            return self.stdout.get(timeout=timeout).rstrip("\n")
        except queue.Empty:
            return None

    def errors(self) -> str:
        while not self.stderr.empty():
            self.stderr_lines.append(self.stderr.get_nowait())
        return "".join(self.stderr_lines)

    def wait(self, timeout: float = 10.0) -> int:
        return self.process.wait(timeout)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


def _pump(stream: IO[str], lines: queue.Queue[str]) -> None:
    for line in stream:
        lines.put(line)
    stream.close()
