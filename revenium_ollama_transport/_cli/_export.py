"""``export``: ledger rows as JSON Lines (``wire`` and ``details`` as objects) or CSV."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, TextIO

import orjson

from ._format import csv_line
from ._rows import ALL_COLUMNS

_JSON_COLUMNS = frozenset({"wire", "details"})


def jsonl(rows: Iterable[tuple[Any, ...]], out: TextIO) -> int:
    """One object per row, columns by name; returns how many rows were written."""
    count = 0
    for row in rows:
        document = {
            name: orjson.loads(value) if name in _JSON_COLUMNS else value
            for name, value in zip(ALL_COLUMNS, row, strict=True)
        }
        out.write(orjson.dumps(document).decode() + "\n")
        count += 1
    return count


def csv(rows: Iterable[tuple[Any, ...]], out: TextIO) -> int:
    """A header, then a line per row (``wire`` and ``details`` as JSON text)."""
    out.write(csv_line(ALL_COLUMNS))
    count = 0
    for row in rows:
        out.write(csv_line(row))
        count += 1
    return count
