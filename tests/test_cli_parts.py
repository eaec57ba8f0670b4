"""The ``revenium-ollama`` command's pure parts: time windows, percentiles, aggregation,
prices and the table layout."""

from __future__ import annotations

import io
import json
import sys
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from revenium_ollama_transport import _ledger
from revenium_ollama_transport._cli import _columns, _format, _prices, _report, _window
from revenium_ollama_transport._cli._progress import Progress
from revenium_ollama_transport._cli._report import CallRow, ModelUsage, aggregate, nearest_rank

from ._cli import T0

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

NOW = 1_750_000_000.0
UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


# --- windows ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30m", 1800), ("24h", 86400), ("7d", 604800), ("90s", 90), ("2w", 1209600), ("1.5h", 5400)],
)
def test_an_age_counts_back_from_now(text: str, seconds: float) -> None:
    assert _window.parse_moment(text, NOW) == NOW - seconds


@given(st.integers(min_value=0, max_value=10**6), st.sampled_from(sorted(UNITS)))
def test_any_whole_age_in_any_unit(amount: int, unit: str) -> None:
    assert _window.parse_moment(f"{amount}{unit}", NOW) == NOW - amount * UNITS[unit]
    assert _window.parse_moment(f" {amount}{unit.upper()} ", NOW) == NOW - amount * UNITS[unit]


@pytest.mark.parametrize(
    ("text", "epoch"),
    [
        ("2025-05-01", T0),
        ("2025-05-01T12:00", T0 + 43200),
        ("2025-05-01T12:00:00Z", T0 + 43200),
        ("2025-05-01T12:00:00+02:00", T0 + 36000),
        ("2025-05-01 00:00:30.500", T0 + 30.5),
    ],
)
def test_an_iso_date_or_datetime_is_utc_unless_it_says(text: str, epoch: float) -> None:
    assert _window.parse_moment(text, NOW) == epoch


def test_local_reads_a_naive_moment_in_this_machines_time_zone() -> None:
    local = datetime(2025, 5, 1, 9, 30).timestamp()  # naive: local time
    assert _window.parse_moment("2025-05-01T09:30", NOW, local=True) == local
    assert _window.parse_moment("2025-05-01T09:30Z", NOW, local=True) == T0 + 9.5 * 3600


@given(
    st.datetimes(
        min_value=datetime(1971, 1, 1),
        max_value=datetime(2200, 1, 1),
        timezones=st.sampled_from(
            [timezone.utc, timezone(timedelta(hours=5, minutes=30)), timezone(-timedelta(hours=8))]
        ),
    )
)
def test_any_iso_datetime_round_trips(moment: datetime) -> None:
    assert _window.parse_moment(moment.isoformat(), NOW) == moment.timestamp()


@pytest.mark.parametrize("text", ["", "7", "d7", "7 days", "yesterday", "2025-13-01", "-5m"])
def test_a_moment_that_cannot_be_read(text: str) -> None:
    with pytest.raises(_window.WindowError, match="neither an age"):
        _window.parse_moment(text, NOW)


def test_a_window_is_since_inclusive_until_exclusive_and_not_empty() -> None:
    span = _window.window("2025-05-01", "2025-05-02", NOW)
    assert span == _window.Window(T0, T0 + 86400)
    assert span.sql() == ("started_at >= ? AND started_at < ?", [T0, T0 + 86400])
    assert span.describe() == {"since": "2025-05-01T00:00:00Z", "until": "2025-05-02T00:00:00Z"}
    assert _window.Window().sql() == ("1", [])
    with pytest.raises(_window.WindowError, match="not after"):
        _window.window("2025-05-02", "2025-05-01", NOW)


# --- percentiles --------------------------------------------------------------------------


def test_nearest_rank_examples() -> None:
    assert nearest_rank([], 50) is None
    assert nearest_rank([7], 95) == 7
    assert nearest_rank(list(range(1, 11)), 50) == 5
    assert nearest_rank(list(range(1, 11)), 95) == 10
    assert nearest_rank(list(range(1, 21)), 95) == 19
    assert nearest_rank(list(range(1, 101)), 95) == 95
    assert nearest_rank([1, 2], 50) == 1


@given(st.lists(st.integers(0, 10**6), min_size=1, max_size=300), st.integers(1, 100))
def test_nearest_rank_is_the_smallest_value_covering_p_percent(values: list[int], p: int) -> None:
    ordered = sorted(values)
    result = nearest_rank(ordered, p)
    assert result in values
    # At least p% of the values are <= it, and fewer than p% are below it.
    assert 100 * sum(v <= result for v in values) >= p * len(values)
    assert 100 * sum(v < result for v in values) < p * len(values)


# --- aggregation --------------------------------------------------------------------------


def row(**fields: object) -> CallRow:
    base: dict[str, object] = {
        "started_at": T0,
        "model": "llama3.2:latest",
        "organization": None,
        "product": None,
        "subscriber": None,
        "agent": None,
        "trace": None,
        "task_type": None,
        "stop_reason": "END",
        "error_code": None,
        "input_tokens": 10,
        "output_tokens": 20,
        "request_duration_ms": 100,
        "time_to_first_token_ms": 10,
        "total_duration_ns": None,
        "load_duration_ns": None,
        "prompt_eval_duration_ns": None,
        "eval_duration_ns": None,
    }
    base.update(fields)
    return CallRow(**base)  # type: ignore[arg-type]


def test_report_columns_are_the_ledger_columns_in_call_row_order() -> None:
    from revenium_ollama_transport._cli._rows import REPORT_COLUMNS

    assert len(REPORT_COLUMNS) == len(CallRow._fields)
    assert set(REPORT_COLUMNS) <= set(_ledger.COLUMNS)


def test_errors_cancelled_tokens_and_latencies() -> None:
    rows = [
        row(request_duration_ms=100),
        row(stop_reason="ERROR", error_code=500, request_duration_ms=5),
        row(stop_reason="TIMEOUT", request_duration_ms=9000, time_to_first_token_ms=None),
        row(stop_reason="END", error_code=404, request_duration_ms=3),  # an HTTP error code
        row(stop_reason="CANCELLED", request_duration_ms=50, time_to_first_token_ms=40),
    ]
    summary = aggregate(rows, ["model"]).groups[("llama3.2:latest",)].summary()
    assert (summary.calls, summary.errors, summary.cancelled) == (5, 3, 1)
    assert (summary.input_tokens, summary.output_tokens) == (50, 100)
    assert (summary.latency_p50_ms, summary.latency_p95_ms) == (50, 9000)
    assert (summary.ttft_p50_ms, summary.ttft_p95_ms) == (10, 40)  # 4 calls had a first token
    assert summary.prefill_tokens_per_s is None  # no Ollama timings at all
    assert summary.load_p50_ms is None and summary.load_total_s is None


def test_speeds_count_only_the_calls_with_ollamas_timings() -> None:
    timed = {"prompt_eval_duration_ns": 50_000_000, "eval_duration_ns": 400_000_000}
    rows = [
        row(input_tokens=30, output_tokens=10, load_duration_ns=2_000_000, **timed),
        row(input_tokens=70, output_tokens=30, load_duration_ns=9_000_000, **timed),
        row(input_tokens=1000, output_tokens=1000),  # an OpenAI-route call: no timings
    ]
    summary = aggregate(rows, []).total.summary()
    assert summary.prefill_tokens_per_s == Decimal(1000)  # 100 tokens / 0.1 s
    assert summary.generation_tokens_per_s == Decimal(50)  # 40 tokens / 0.8 s
    assert summary.load_p50_ms == Decimal("2.000000")
    assert summary.load_total_s == Decimal("0.011000000")


def test_groups_by_several_dimensions_days_and_hours() -> None:
    rows = [
        row(organization="acme", started_at=T0 + 3600 * 25 + 5),
        row(organization="acme", model="qwen2.5:0.5b", started_at=T0 + 3600 * 25 + 7),
        row(organization=None, started_at=T0 + 10),
    ]
    by_org_day = aggregate(rows, ["organization", "day"])
    assert [k for k, _ in by_org_day.ordered()] == [("acme", "2025-05-02"), (None, "2025-05-01")]
    by_hour = aggregate(rows, ["hour", "model"])
    assert sorted(by_hour.groups) == [
        ("2025-05-01T00:00", "llama3.2:latest"),
        ("2025-05-02T01:00", "llama3.2:latest"),
        ("2025-05-02T01:00", "qwen2.5:0.5b"),
    ]
    assert by_hour.total.calls == 3
    usage = by_org_day.groups[("acme", "2025-05-02")].usage
    assert set(usage) == {"llama3.2:latest", "qwen2.5:0.5b"}


def test_gpu_time_is_ollamas_total_duration_else_the_request_duration() -> None:
    rows = [row(total_duration_ns=1_500_000_000, request_duration_ms=1600), row()]
    usage = aggregate(rows, []).total.usage["llama3.2:latest"]
    assert usage == ModelUsage(calls=2, input_tokens=20, output_tokens=40, busy_ns=1_600_000_000)


# --- prices -------------------------------------------------------------------------------

TOML = """
currency = "EUR"
[models."llama3.2"]
gpu_hour = 1.20
[models."llama3.2:70b"]
input_per_million = "0.10"
output_per_million = 0.4
[models.hosted]
input_per_million = 0.15
output_per_million = 0.60
gpu_hour = 0
"""
JSON = """{"currency": "EUR", "models": {
  "llama3.2": {"gpu_hour": 1.20},
  "llama3.2:70b": {"input_per_million": "0.10", "output_per_million": 0.4},
  "hosted": {"input_per_million": 0.15, "output_per_million": 0.60, "gpu_hour": 0}}}"""


def test_toml_and_json_prices_are_the_same_exact_decimals(tmp_path: Path) -> None:
    (tmp_path / "p.toml").write_text(TOML)
    (tmp_path / "p.json").write_text(JSON)
    from_toml = _prices.load(tmp_path / "p.toml")
    assert from_toml == _prices.load(tmp_path / "p.json")
    assert from_toml.currency == "EUR"
    assert from_toml.models["llama3.2:70b"] == _prices.Price(Decimal("0.10"), Decimal("0.4"))
    assert from_toml.models["hosted"].output_per_million == Decimal("0.60")


def test_a_model_matches_exactly_else_without_its_tag() -> None:
    prices = _prices.parse(
        {"models": {"llama3.2": {"gpu_hour": 1}, "llama3.2:70b": {"gpu_hour": 9}}}
    )
    assert prices.currency == "USD"
    assert prices.find("llama3.2:70b") == _prices.Price(gpu_hour=Decimal(9))
    assert prices.find("llama3.2:latest") == _prices.Price(gpu_hour=Decimal(1))
    assert prices.find("llama3.2") == _prices.Price(gpu_hour=Decimal(1))
    assert prices.find("qwen2.5:0.5b") is None


def test_costs_are_exact_decimals_where_floats_drift() -> None:
    price = _prices.Price(input_per_million=Decimal("0.1"))
    three = [ModelUsage(1, 155, 0, 0)] * 3
    exact = sum((price.cost(u) for u in three), Decimal(0))
    assert exact == Decimal("0.0000465")
    assert sum(155 * 0.1 / 1e6 for _ in three) != 0.0000465  # what floats would have said
    assert _format.quantize(exact, 6) == Decimal("0.000046")  # half to even


def test_a_gpu_hour_prices_the_busy_time() -> None:
    price = _prices.Price(gpu_hour=Decimal("1.20"))
    assert price.cost(ModelUsage(1, 0, 0, 3_600_000_000_000)) == Decimal("1.20")
    assert price.cost(ModelUsage(1, 0, 0, 312_345_678)) == Decimal("0.0001041152260")
    both = _prices.Price(Decimal(1), Decimal(2), Decimal("3.6"))
    assert both.cost(ModelUsage(1, 1_000_000, 1_000_000, 1_000_000_000)) == Decimal("3.001")


def test_a_group_with_an_unpriced_model_has_no_cost() -> None:
    prices = _prices.parse({"models": {"llama3.2": {"input_per_million": 1}}})
    usage = {"llama3.2:latest": ModelUsage(1, 10, 0, 0), "mistral": ModelUsage(1, 10, 0, 0)}
    assert prices.cost(usage) == (None, ["mistral"])
    assert prices.cost({"llama3.2:latest": usage["llama3.2:latest"]}) == (Decimal("0.00001"), [])


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ([], "must hold a table"),
        ({"models": {}}, "no models"),
        ({"currency": "USD"}, "no models"),
        ({"currency": 5, "models": {"m": {"gpu_hour": 1}}}, "currency must be"),
        ({"models": {"m": {"gpu_hour": 1}}, "extra": 1}, "unknown key"),
        ({"models": {"m": {"gpu_hours": 1}}}, "unknown key.*gpu_hours"),
        ({"models": {"m": {}}}, "has no price"),
        ({"models": {"m": 3}}, "must be a table"),
        ({"models": {"m": {"gpu_hour": -1}}}, ">= 0"),
        ({"models": {"m": {"gpu_hour": "cheap"}}}, "must be a number"),
        ({"models": {"m": {"gpu_hour": True}}}, "must be a number"),
        ({"models": {"m": {"gpu_hour": 1.5}}}, "must be a number"),  # a float, not a Decimal
        ({"models": {"m": {"gpu_hour": Decimal("NaN")}}}, "finite"),
    ],
)
def test_a_bad_prices_document(document: object, message: str) -> None:
    with pytest.raises(_prices.PricesError, match=message):
        _prices.parse(document)


def test_a_bad_prices_file_names_itself(tmp_path: Path) -> None:
    broken = tmp_path / "broken.toml"
    broken.write_text("[models.x\ngpu_hour = 1\n")
    with pytest.raises(_prices.PricesError, match=r"broken\.toml is not valid"):
        _prices.load(broken)
    (tmp_path / "b.json").write_text('{"models": {"x": {"gpu_hour": NaN}}}')
    with pytest.raises(_prices.PricesError, match=r"b\.json.*must be a number"):
        _prices.load(tmp_path / "b.json")
    with pytest.raises(_prices.PricesError, match="cannot read"):
        _prices.load(tmp_path / "missing.toml")


def test_the_example_prices_file_is_valid() -> None:
    prices = _prices.load(Path(__file__).parent.parent / "examples" / "prices.toml")
    assert prices.find("llama3.2:latest") == _prices.Price(gpu_hour=Decimal("1.20"))
    assert "gpt-4o-mini" in prices.models


@given(st.decimals(min_value=0, max_value=10**6, places=6, allow_nan=False))
def test_any_price_written_in_toml_or_json_reads_back_exactly(amount: Decimal) -> None:
    toml_document = tomllib.loads(
        f'[models.m]\ngpu_hour = {amount}\ninput_per_million = "{amount}"',
        parse_float=Decimal,
    )
    json_document = json.loads(
        f'{{"models": {{"m": {{"gpu_hour": {amount}, "input_per_million": "{amount}"}}}}}}',
        parse_float=Decimal,
    )
    expected = _prices.Price(input_per_million=amount, gpu_hour=amount)
    assert _prices.parse(toml_document).models["m"] == expected
    assert _prices.parse(json_document).models["m"] == expected


# --- output -------------------------------------------------------------------------------


def test_the_table_aligns_text_left_and_numbers_right() -> None:
    out = io.StringIO()
    _format.table(["model", "calls", "cost"], [["a", 5, Decimal("0.5")], ["bbbb", 10, None]], out)
    assert out.getvalue().splitlines() == [
        "model  calls  cost",
        "a          5   0.5",
        "bbbb      10",
    ]


def test_a_table_view_has_short_headers_a_total_and_a_note_for_unpriced_models() -> None:
    rows = [row(), row(model="mistral:7b", organization="acme")]
    report = _report.aggregate(rows, ["model", "organization"])
    costing = _columns.Costing(_prices.parse({"models": {"llama3.2": {"gpu_hour": 1}}}))
    view = _columns.view(report, costing, table=True)
    assert view.headers[:3] == ["model", "organization", "calls"]
    assert view.headers[-1] == "cost_USD"
    assert [r[:2] for r in view.rows] == [
        ["llama3.2:latest", "-"],
        ["mistral:7b", "acme"],
        ["TOTAL", ""],
    ]
    assert [r[-1] for r in view.rows] == [Decimal("0.0000"), None, None]
    assert view.notes == [
        "note: no price for mistral:7b (exact name, or name without its :tag): groups with "
        "their calls have no cost"
    ]


def test_progress_off_a_terminal_is_a_line_a_tenth() -> None:
    out = io.StringIO()
    progress = Progress("upload", 25, out, tty=False)
    for done in range(1, 26):
        progress.update(done)
    progress.close()
    assert out.getvalue().splitlines() == [
        "upload: 3/25 (12%)",
        "upload: 6/25 (24%)",
        "upload: 9/25 (36%)",
        "upload: 12/25 (48%)",
        "upload: 15/25 (60%)",
        "upload: 18/25 (72%)",
        "upload: 21/25 (84%)",
        "upload: 24/25 (96%)",
        "upload: 25/25 (100%)",
    ]


def test_progress_on_a_terminal_redraws_one_line() -> None:
    out = io.StringIO()
    now = [100.0]
    progress = Progress("upload", 4, out, tty=True, clock=lambda: now[0])
    progress.update(1)
    now[0] += 0.05
    progress.update(2)  # within a tenth of a second: not drawn
    progress.update(4)  # the end always is
    progress.close()
    bar = "#" * 30
    assert out.getvalue() == (
        "\rupload [" + "#" * 7 + " " * 23 + "] 1/4" + "\rupload [" + bar + "] 4/4\n"
    )
