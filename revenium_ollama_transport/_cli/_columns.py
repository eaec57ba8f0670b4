"""What ``report`` shows of each group: its columns, rounded for display, with costs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ._format import ROUNDING, Cell, quantize
from ._prices import Price, Prices, reference_cost
from ._report import PERCENTILE_HELP, Group, GroupKey, Report, Summary

# (name in csv and json, header in the table, decimals shown) of the statistics.
_STATS: tuple[tuple[str, str, int | None], ...] = (
    ("calls", "calls", None),
    ("errors", "errors", None),
    ("cancelled", "cancelled", None),
    ("input_tokens", "in_tokens", None),
    ("output_tokens", "out_tokens", None),
    ("latency_p50_ms", "p50_ms", None),
    ("latency_p95_ms", "p95_ms", None),
    ("ttft_p50_ms", "ttft_p50_ms", None),
    ("ttft_p95_ms", "ttft_p95_ms", None),
    ("prefill_tokens_per_s", "prefill_tok/s", 1),
    ("generation_tokens_per_s", "gen_tok/s", 1),
    ("load_p50_ms", "load_p50_ms", 1),
    ("load_total_s", "load_total_s", 3),
)

TABLE_COST_PLACES = 4
DATA_COST_PLACES = 6
NONE_LABEL = "-"  # a group without a value of its dimension, in the table
TOTAL_LABEL = "TOTAL"


@dataclass(frozen=True)
class Costing:
    prices: Prices
    reference_name: str | None = None
    reference: Price | None = None


@dataclass
class View:
    headers: list[str]
    rows: list[list[Cell]]
    notes: list[str]


def _stat_cells(summary: Summary) -> list[Cell]:
    cells: list[Cell] = []
    for name, _, places in _STATS:
        value = getattr(summary, name)
        cells.append(quantize(value, places) if places is not None else value)
    return cells


def _costs(group: Group, costing: Costing, places: int) -> tuple[list[Cell], list[str]]:
    cost, unpriced = costing.prices.cost(group.usage)
    cells: list[Cell] = [quantize(cost, places)]
    if costing.reference is not None:
        cells.append(quantize(reference_cost(costing.reference, group.usage.values()), places))
    return cells, unpriced


def _cost_headers(costing: Costing | None, table: bool) -> list[str]:
    if costing is None:
        return []
    currency = costing.prices.currency
    headers = [f"cost_{currency}" if table else "cost"]
    if costing.reference is not None:
        headers.append(f"at_{costing.reference_name}_{currency}" if table else "reference_cost")
    return headers


def _unpriced_note(models: set[str]) -> list[str]:
    if not models:
        return []
    return [
        f"note: no price for {', '.join(sorted(models))} (exact name, or name without its "
        ":tag): groups with their calls have no cost"
    ]


def view(report: Report, costing: Costing | None, table: bool) -> View:
    """The rows of a table (``table``: short headers, a TOTAL row, 4-decimal costs) or of
    a CSV file (names as in JSON, 6-decimal costs)."""
    places = TABLE_COST_PLACES if table else DATA_COST_PLACES
    headers = [*report.by, *(header if table else name for name, header, _ in _STATS)]
    headers += _cost_headers(costing, table)
    entries: list[tuple[GroupKey, Group]] = report.ordered()
    if table and len(entries) > 1:
        entries.append(((TOTAL_LABEL,) + ("",) * (len(report.by) - 1), report.total))
    rows: list[list[Cell]] = []
    unpriced: set[str] = set()
    for key, group in entries:
        shown = [NONE_LABEL if v is None else v for v in key] if table else list(key)
        row: list[Cell] = [*shown, *_stat_cells(group.summary())]
        if costing is not None:
            cells, missing = _costs(group, costing, places)
            row += cells
            unpriced.update(missing)
        rows.append(row)
    return View(headers, rows, _unpriced_note(unpriced))


def _group_document(
    by: tuple[str, ...], key: GroupKey | None, group: Group, costing: Costing | None
) -> dict[str, Any]:
    document: dict[str, Any] = {} if key is None else dict(zip(by, key, strict=True))
    summary = group.summary()
    for name, _, places in _STATS:
        value = getattr(summary, name)
        if places is not None and value is not None:
            value = float(quantize(value, places) or 0)  # a measurement: a JSON number
        document[name] = value
    if costing is not None:
        cells, unpriced = _costs(group, costing, DATA_COST_PLACES)
        document["cost"] = cells[0]
        if costing.reference is not None:
            document["reference_cost"] = cells[1]
        if unpriced:
            document["unpriced_models"] = unpriced
    return document


def json_document(
    report: Report, costing: Costing | None, window: dict[str, str | None]
) -> dict[str, Any]:
    """The whole report as one JSON object."""
    groups = [_group_document(report.by, k, g, costing) for k, g in report.ordered()]
    document: dict[str, Any] = {
        "window": window,
        "by": list(report.by),
        "percentiles": PERCENTILE_HELP,
        "groups": groups,
        "total": _group_document(report.by, None, report.total, costing),
    }
    if costing is not None:
        document["currency"] = costing.prices.currency
        document["cost_rounding"] = f"{DATA_COST_PLACES} decimals, {ROUNDING}"
        if costing.reference_name is not None:
            document["reference"] = costing.reference_name
        unpriced = {m for g in groups for m in g.get("unpriced_models", ())}
        document["notes"] = _unpriced_note(unpriced)
    return document
