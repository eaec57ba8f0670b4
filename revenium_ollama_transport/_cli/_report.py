"""``report``'s arithmetic: ledger rows folded into per-group statistics. Pure: rows in,
numbers out, exact (ints and ``Decimal``), one pass over the rows."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from decimal import Decimal
from typing import NamedTuple

PERCENTILE_HELP = (
    "Percentiles are nearest-rank: the p-th percentile of n values is the value at rank "
    "ceil(p/100 * n) in ascending order (always a measured value)."
)

ERROR_STOP_REASONS = frozenset({"ERROR", "TIMEOUT"})


class CallRow(NamedTuple):
    """The columns of a ledger row that ``report`` reads (``_rows.REPORT_COLUMNS``)."""

    started_at: float
    model: str
    organization: str | None
    product: str | None
    subscriber: str | None
    agent: str | None
    trace: str | None
    task_type: str | None
    stop_reason: str
    error_code: int | None
    input_tokens: int
    output_tokens: int
    request_duration_ms: int
    time_to_first_token_ms: int | None
    total_duration_ns: int | None
    load_duration_ns: int | None
    prompt_eval_duration_ns: int | None
    eval_duration_ns: int | None


def _bucket(pattern: str) -> Callable[[CallRow, bool], str]:
    def key(row: CallRow, local: bool) -> str:
        zone = None if local else timezone.utc
        return datetime.fromtimestamp(row.started_at, zone).strftime(pattern)

    return key


def _field(name: str) -> Callable[[CallRow, bool], str | None]:
    def key(row: CallRow, local: bool) -> str | None:
        value: str | None = getattr(row, name)
        return value

    return key


# What ``--by`` accepts, and how each dimension reads a row.
DIMENSIONS: dict[str, Callable[[CallRow, bool], str | None]] = {
    "model": _field("model"),
    "organization": _field("organization"),
    "product": _field("product"),
    "subscriber": _field("subscriber"),
    "agent": _field("agent"),
    "trace": _field("trace"),
    "task_type": _field("task_type"),
    "day": _bucket("%Y-%m-%d"),
    "hour": _bucket("%Y-%m-%dT%H:00"),
}


def nearest_rank(ordered: Sequence[int], percent: int) -> int | None:
    """The ``percent``-th percentile (1..100) of ascending ``ordered``, nearest-rank."""
    if not ordered:
        return None
    rank = -(-percent * len(ordered) // 100)  # ceil without floats
    return ordered[max(rank, 1) - 1]


@dataclass
class ModelUsage:
    """What a group's calls of one model used: what prices apply to."""

    calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    # Ollama's total_duration where the row has it, else the measured request duration.
    busy_ns: int = 0


@dataclass
class Group:
    """Running totals of one group; ``summary()`` gives its statistics."""

    calls: int = 0
    errors: int = 0
    cancelled: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    latencies_ms: list[int] = field(default_factory=list)
    ttfts_ms: list[int] = field(default_factory=list)
    loads_ns: list[int] = field(default_factory=list)
    prefill_tokens: int = 0
    prefill_ns: int = 0
    generated_tokens: int = 0
    generation_ns: int = 0
    usage: dict[str, ModelUsage] = field(default_factory=dict)

    def add(self, row: CallRow) -> None:
        self.calls += 1
        if row.stop_reason in ERROR_STOP_REASONS or row.error_code is not None:
            self.errors += 1
        elif row.stop_reason == "CANCELLED":
            self.cancelled += 1
        self.input_tokens += row.input_tokens
        self.output_tokens += row.output_tokens
        self.latencies_ms.append(row.request_duration_ms)
        if row.time_to_first_token_ms is not None:
            self.ttfts_ms.append(row.time_to_first_token_ms)
        if row.load_duration_ns is not None:
            self.loads_ns.append(row.load_duration_ns)
        if row.prompt_eval_duration_ns:  # native API answers with timings only
            self.prefill_tokens += row.input_tokens
            self.prefill_ns += row.prompt_eval_duration_ns
        if row.eval_duration_ns:
            self.generated_tokens += row.output_tokens
            self.generation_ns += row.eval_duration_ns
        usage = self.usage.get(row.model)
        if usage is None:
            usage = self.usage[row.model] = ModelUsage()
        usage.calls += 1
        usage.input_tokens += row.input_tokens
        usage.output_tokens += row.output_tokens
        usage.busy_ns += row.total_duration_ns or row.request_duration_ms * 1_000_000

    def summary(self) -> Summary:
        latencies = sorted(self.latencies_ms)
        ttfts = sorted(self.ttfts_ms)
        loads = sorted(self.loads_ns)
        load_p50 = nearest_rank(loads, 50)
        return Summary(
            calls=self.calls,
            errors=self.errors,
            cancelled=self.cancelled,
            input_tokens=self.input_tokens,
            output_tokens=self.output_tokens,
            latency_p50_ms=nearest_rank(latencies, 50),
            latency_p95_ms=nearest_rank(latencies, 95),
            ttft_p50_ms=nearest_rank(ttfts, 50),
            ttft_p95_ms=nearest_rank(ttfts, 95),
            prefill_tokens_per_s=_rate(self.prefill_tokens, self.prefill_ns),
            generation_tokens_per_s=_rate(self.generated_tokens, self.generation_ns),
            load_p50_ms=None if load_p50 is None else Decimal(load_p50).scaleb(-6),
            load_total_s=Decimal(sum(loads)).scaleb(-9) if loads else None,
        )


def _rate(tokens: int, nanoseconds: int) -> Decimal | None:
    if nanoseconds <= 0:
        return None
    return Decimal(tokens) * 1_000_000_000 / Decimal(nanoseconds)


@dataclass(frozen=True)
class Summary:
    calls: int
    errors: int
    cancelled: int
    input_tokens: int
    output_tokens: int
    latency_p50_ms: int | None
    latency_p95_ms: int | None
    ttft_p50_ms: int | None
    ttft_p95_ms: int | None
    prefill_tokens_per_s: Decimal | None
    generation_tokens_per_s: Decimal | None
    load_p50_ms: Decimal | None
    load_total_s: Decimal | None


GroupKey = tuple[str | None, ...]


@dataclass
class Report:
    by: tuple[str, ...]
    groups: dict[GroupKey, Group] = field(default_factory=dict)
    total: Group = field(default_factory=Group)

    def ordered(self) -> list[tuple[GroupKey, Group]]:
        """Groups sorted by their key, a missing value last."""
        return sorted(self.groups.items(), key=lambda item: [(v is None, v or "") for v in item[0]])


def aggregate(rows: Iterable[CallRow], by: Sequence[str], local: bool = False) -> Report:
    """Folds ``rows`` into groups by the ``DIMENSIONS`` named in ``by`` (in that order);
    ``day`` and ``hour`` are UTC, or the machine's time zone when ``local``."""
    keys = [DIMENSIONS[name] for name in by]
    report = Report(tuple(by))
    groups = report.groups
    total = report.total
    for row in rows:
        key = tuple(k(row, local) for k in keys)
        group = groups.get(key)
        if group is None:
            group = groups[key] = Group()
        group.add(row)
        total.add(row)
    return report
