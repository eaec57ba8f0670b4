"""``--since`` / ``--until``: a moment given as an age (``7d``, ``24h``, ``30m``) or as an
ISO-8601 date or date-time, turned into epoch seconds (the ledger's ``started_at``)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timezone

_AGE = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw])", re.IGNORECASE)
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}

WINDOW_HELP = (
    "an age back from now (a number and a unit: s, m, h, d or w, e.g. 30m, 24h, 7d), or an "
    "ISO-8601 date (2025-05-01: its midnight) or date-time (2025-05-01T12:00, "
    "2025-05-01T12:00:00+02:00); without an offset, UTC (local time with --local)"
)


class WindowError(ValueError):
    """A moment that cannot be read; the message says what was expected."""


def parse_moment(text: str, now: float, local: bool = False) -> float:
    """Epoch seconds of ``text``: an age before ``now``, or an ISO date / date-time (a
    naive one is in UTC, or in the machine's time zone when ``local``). Raises
    ``WindowError``."""
    value = text.strip()
    age = _AGE.fullmatch(value)
    if age is not None:
        return now - float(age.group(1)) * _UNIT_SECONDS[age.group(2).lower()]
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise WindowError(
            f"{text!r} is neither an age (30m, 24h, 7d) nor an ISO-8601 date or date-time"
        ) from None
    if moment.tzinfo is None and not local:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.timestamp()  # a naive datetime's timestamp() is local time


@dataclass(frozen=True)
class Window:
    """``since <= started_at < until``; None leaves that side open."""

    since: float | None = None
    until: float | None = None

    def sql(self) -> tuple[str, list[float]]:
        """A ``WHERE`` clause (``"1"`` when open) and its parameters."""
        clauses: list[str] = []
        parameters: list[float] = []
        if self.since is not None:
            clauses.append("started_at >= ?")
            parameters.append(self.since)
        if self.until is not None:
            clauses.append("started_at < ?")
            parameters.append(self.until)
        return (" AND ".join(clauses) or "1"), parameters

    def describe(self) -> dict[str, str | None]:
        """Both ends as ISO-8601 UTC strings (None when open)."""
        return {"since": _iso(self.since), "until": _iso(self.until)}


def _iso(epoch: float | None) -> str | None:
    if epoch is None:
        return None
    moment = datetime.fromtimestamp(epoch, timezone.utc)
    return moment.isoformat(timespec="seconds").replace("+00:00", "Z")


def window(since: str | None, until: str | None, now: float, local: bool = False) -> Window:
    """The window of ``--since`` / ``--until``; raises ``WindowError`` (also when empty)."""
    start = None if since is None else parse_moment(since, now, local)
    end = None if until is None else parse_moment(until, now, local)
    if start is not None and end is not None and end <= start:
        raise WindowError(f"--until {until!r} is not after --since {since!r}")
    return Window(start, end)
