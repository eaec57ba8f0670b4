"""The fake metering API in a child process, and the handle the benchmarks drive it by.

In the benchmark's own process the server's threads would compete for the GIL with the
calls being timed, so it runs apart: ``python _metering_api.py [latency] [--accept-all]``
prints its URL, then answers one line for each command line on stdin:

- ``count``: how many records it stored so far;
- ``records``: the records received since the last ``records``, as one JSON list.

``--accept-all`` stores every record that has a ``transactionId`` even when the fake's
rules would refuse it, and ``records`` gives the first such problem of each under
``_refused_because``: for a client whose records the fake refuses (the revenium SDK sends
explicit nulls), so that its delivery runs as against a server that takes them, and the
refusal is still reported.

The handle imports nothing of ``revenium_ollama_transport``; only the child does.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson

ACCEPT_ALL = "--accept-all"
ENDPOINT = "/meter/v2/ai/completions"


class MeteringAPIProcess:
    """Starts the fake metering API in a child process; ``url`` is its base URL."""

    def __init__(self, latency: float = 0.0, *, accept_all: bool = False) -> None:
        args = [sys.executable, str(Path(__file__).resolve()), str(latency)]
        if accept_all:
            args.append(ACCEPT_ALL)
        # The child must not meter anything it imports; nor may it talk to anyone.
        env = dict(os.environ, REVENIUM_METERING_ENABLED="false", REVENIUM_SPOOL_DIR="off")
        self._process = subprocess.Popen(
            args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env
        )
        assert self._process.stdin is not None and self._process.stdout is not None
        self._stdin = self._process.stdin
        self._stdout = self._process.stdout
        self.url = self._stdout.readline().strip()
        if not self.url:
            raise RuntimeError("the fake metering API did not start")

    def _ask(self, command: str) -> str:
        self._stdin.write(command + "\n")
        self._stdin.flush()
        return self._stdout.readline()

    def count(self) -> int:
        return int(self._ask("count"))

    def records(self) -> list[dict[str, Any]]:
        """The records received since the last call, oldest first."""
        parsed: list[dict[str, Any]] = orjson.loads(self._ask("records"))
        return parsed

    def close(self) -> None:
        if self._process.poll() is None:
            self._stdin.close()
            try:
                self._process.wait(10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()

    def __enter__(self) -> MeteringAPIProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _serve(latency: float, accept_all: bool) -> None:
    import importlib

    from revenium_ollama_transport.testing import FakeMeteringAPI

    fake_api: Any = importlib.import_module("revenium_ollama_transport.testing._fake_api")
    refusals: dict[int, str] = {}  # id() of each record the fake's rules would refuse -> why
    if accept_all:
        validate = fake_api.validate_record

        def accept(record: Any, *, allow_unknown_fields: bool = False) -> tuple[str, str] | None:
            problem: tuple[str, str] | None = validate(
                record, allow_unknown_fields=allow_unknown_fields
            )
            if problem is not None and isinstance(record, dict) and "transactionId" in record:
                refusals[id(record)] = problem[1]
                return None
            return problem

        fake_api.validate_record = accept

    with FakeMeteringAPI(allow_unknown_fields=accept_all) as api:
        api.latency = latency
        print(api.url, flush=True)
        seen = 0  # records already returned
        for line in sys.stdin:
            stored = api.records
            if line.strip() == "records":
                got = [
                    {**record, "_refused_because": refusals[id(record)]}
                    if id(record) in refusals
                    else record
                    for record in stored[seen:]
                ]
                seen = len(stored)
                print(orjson.dumps(got).decode(), flush=True)
            else:
                print(len(stored), flush=True)


if __name__ == "__main__":
    _serve(
        float(sys.argv[1]) if len(sys.argv) > 1 and sys.argv[1] != ACCEPT_ALL else 0.0,
        ACCEPT_ALL in sys.argv[2:] or sys.argv[1:2] == [ACCEPT_ALL],
    )
