"""Output: an aligned text table, CSV and JSON, from rows of display values."""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping, Sequence
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any, TextIO

import orjson

Cell = str | int | Decimal | None

ROUNDING = "half-to-even"


def quantize(value: Decimal | None, places: int) -> Decimal | None:
    """``value`` rounded half-to-even to ``places`` decimals (None stays None)."""
    if value is None:
        return None
    return value.quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_EVEN)


def _text(cell: Cell) -> str:
    return "" if cell is None else str(cell)


def table(headers: Sequence[str], rows: Sequence[Sequence[Cell]], out: TextIO) -> None:
    """Columns padded to their widest cell; text left-aligned, numbers right-aligned."""
    texts = [[_text(cell) for cell in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in texts:
        widths = [max(w, len(t)) for w, t in zip(widths, row, strict=True)]
    numeric = [
        all(isinstance(row[i], (int, Decimal)) or row[i] is None for row in rows) and bool(rows)
        for i in range(len(headers))
    ]

    def line(cells: Sequence[str]) -> str:
        padded = (
            c.rjust(w) if right else c.ljust(w)
            for c, w, right in zip(cells, widths, numeric, strict=True)
        )
        return "  ".join(padded).rstrip()

    out.write(line(headers) + "\n")
    for row in texts:
        out.write(line(row) + "\n")


def csv_rows(headers: Sequence[str], rows: Sequence[Sequence[Cell]], out: TextIO) -> None:
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(headers)
    writer.writerows([_text(cell) for cell in row] for row in rows)


def csv_line(values: Sequence[Any]) -> str:
    """One CSV line (with its newline) of ``values``: None empty, the rest as ``str``."""
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerow(_text(v) for v in values)
    return buffer.getvalue()


def _jsonable(value: object) -> Any:
    if isinstance(value, Decimal):
        return str(value)  # exact: JSON numbers would be read back as floats
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def json_text(document: Mapping[str, Any]) -> str:
    return orjson.dumps(document, default=_jsonable, option=orjson.OPT_INDENT_2).decode() + "\n"
