"""``tail``: new ledger rows as they arrive, one line each, by polling on ``id``."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Sequence
from typing import Any, TextIO

from . import _rows


def line(row: Sequence[Any]) -> str:
    """One call: time, model, operation, tokens in/out, latency, stop reason, attribution."""
    (
        _id,
        request_time,
        model,
        operation,
        input_tokens,
        output_tokens,
        duration_ms,
        stop_reason,
        organization,
        subscriber,
    ) = row
    parts = [
        str(request_time),
        str(model),
        str(operation),
        f"in={input_tokens}",
        f"out={output_tokens}",
        f"{duration_ms}ms",
        str(stop_reason),
    ]
    if organization:
        parts.append(f"org={organization}")
    if subscriber:
        parts.append(f"subscriber={subscriber}")
    return "  ".join(parts)


def follow(
    connection: sqlite3.Connection,
    out: TextIO,
    last: int,
    interval: float,
    sleep: Callable[[float], None] = time.sleep,
) -> None:
    """Prints the last ``last`` rows, then every new one, until interrupted."""
    if last > 0:
        shown = _rows.tail_last(connection, last)
        after = shown[-1][0] if shown else 0
        out.writelines(line(row) + "\n" for row in shown)
    else:
        after = _rows.last_id(connection)
    out.flush()
    while True:
        rows = _rows.tail_after(connection, after)
        for row in rows:
            out.write(line(row) + "\n")
        if rows:
            after = rows[-1][0]
            out.flush()
        sleep(interval)
