"""The records' timestamps: ``iso_utc`` against the standard library's own formatting."""

from __future__ import annotations

from datetime import datetime, timezone

from hypothesis import example, given
from hypothesis import strategies as st

from revenium_ollama_transport._record import iso_utc


def by_datetime(epoch_seconds: float) -> str:
    moment = datetime.fromtimestamp(epoch_seconds, timezone.utc)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


@given(st.floats(min_value=0.0, max_value=4_102_444_800.0))  # up to 2100
@example(0.0)
@example(0.9999995)  # rounds up into the next second
@example(1_735_787_045.9999996)
@example(1_735_787_045.0004999)
@example(1_735_787_045.0005)
@example(951_782_400.5)  # 2000-02-29
def test_iso_utc_formats_as_datetime_does(epoch_seconds: float) -> None:
    assert iso_utc(epoch_seconds) == by_datetime(epoch_seconds)


def test_iso_utc_within_one_second_and_across_seconds() -> None:
    # The last second's text is reused: the next second must not inherit it.
    assert iso_utc(1_735_787_045.001) == "2025-01-02T03:04:05.001Z"
    assert iso_utc(1_735_787_045.999) == "2025-01-02T03:04:05.999Z"
    assert iso_utc(1_735_787_046.0) == "2025-01-02T03:04:06.000Z"
    assert iso_utc(1_735_787_045.5) == "2025-01-02T03:04:05.500Z"
