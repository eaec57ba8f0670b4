"""What ``count_instructions.py`` runs under callgrind: ``MODE N``.

plain / transport / installed: N small chats over the in-process mock, records discarded.
delivery: N such calls' records, made first, then handed to delivery at once and delivered
to the fake metering API (another process); the main thread waits meanwhile.
"""

from __future__ import annotations

import os
import sys
from typing import Any

os.environ["REVENIUM_SPOOL_DIR"] = "off"  # nothing of the user's touched
os.environ["REVENIUM_LEDGER"] = "off"

import ollama
from _metering_api import MeteringAPIProcess
from _ollama_mock import MODEL, SMALL, mock_transport

import revenium_ollama_transport as metering
from revenium_ollama_transport import ReveniumTransport, _ids, _sink

IDS_MADE_AHEAD = 10_000


def discard(observation: Any) -> None:
    """A sink that keeps nothing."""


def calls(mode: str, n: int) -> None:
    # Ids made ahead, as the delivery thread keeps them in a real process: as many in every
    # run, so that making them cancels out of the difference.
    if n > IDS_MADE_AHEAD:
        raise SystemExit(f"at most {IDS_MADE_AHEAD} calls")
    _ids.RESERVE = IDS_MADE_AHEAD
    _ids.replenish()
    mock = mock_transport()
    if mode == "installed":
        _sink.set_default_sink(discard)
        client = ollama.Client(host="http://ollama.bench", transport=mock)
    else:
        metering.uninstall()
        transport = ReveniumTransport(mock, sink=discard) if mode == "transport" else mock
        client = ollama.Client(host="http://ollama.bench", transport=transport)
    for _ in range(n):
        client.chat(model=MODEL, messages=SMALL)


def delivery(n: int) -> None:
    dispatcher = _sink.delivery()
    api = MeteringAPIProcess(0.0)
    try:
        metering.configure(api_key="hak_bench", base_url=api.url, queue_size=n + 100)
        metering.uninstall()
        made: list[Any] = []
        client = ollama.Client(
            host="http://ollama.bench",
            transport=ReveniumTransport(mock_transport(), sink=made.append),
        )
        for _ in range(n):
            client.chat(model=MODEL, messages=SMALL)
        for observation in made:
            dispatcher.submit(observation)
        assert metering.flush(600.0), "records still undelivered after 600 s"
        assert api.count() == n, f"{api.count()} records stored of {n}"
    finally:
        metering.shutdown(10.0)
        api.close()


if __name__ == "__main__":
    mode, count = sys.argv[1], int(sys.argv[2])
    if mode == "delivery":
        delivery(count)
    else:
        calls(mode, count)
