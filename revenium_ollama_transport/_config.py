"""Settings: environment variables, ``configure()`` overrides, base URL normalisation."""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

logger = logging.getLogger("revenium_ollama_transport")

DEFAULT_BASE_URL = "https://api.revenium.ai/meter"
COMPLETIONS_PATH = "/v2/ai/completions"


@dataclass(frozen=True)
class Settings:
    api_key: str | None = None
    base_url: str | None = DEFAULT_BASE_URL  # normalised; None when the given one is unusable
    queue_size: int = 10_000
    max_in_flight: int = 64
    request_timeout: float = 10.0
    max_attempts: int = 6
    max_retry_wait: float = 30.0
    shutdown_timeout: float = 5.0
    spool_dir: str | None = None  # REVENIUM_SPOOL_DIR: None for the default, "off" for none
    spool_max_mb: float = 100.0
    # REVENIUM_LEDGER: "on", "off", or None for the default: on when there is no API key.
    ledger: str | None = None
    ledger_path: str | None = None  # REVENIUM_LEDGER_PATH: None for the default
    # Called in the delivery thread with a DeliveryError for each record not delivered.
    on_delivery_error: Callable[[Any], object] | None = None

    @functools.cached_property
    def endpoint(self) -> str | None:  # read for every record: made once
        return None if self.base_url is None else self.base_url + COMPLETIONS_PATH

    @property
    def ledger_on(self) -> bool:
        """Whether records are written to the local ledger."""
        return self.ledger == "on" or (self.ledger != "off" and not self.api_key)

    def __repr__(self) -> str:  # never print the key
        shown = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        shown["api_key"] = "<set>" if self.api_key else None
        return "Settings(" + ", ".join(f"{k}={v!r}" for k, v in shown.items()) + ")"


@dataclass(frozen=True)
class DeliveryError:
    """What ``on_delivery_error`` is told about a record that was not delivered."""

    transaction_id: str
    reason: str  # "refused" (the API said no), "retries_exhausted", "internal_error"
    status: int | None  # the HTTP status of the last answer, when there was one
    message: str
    record: dict[str, Any]


def normalise_base_url(raw: str) -> tuple[str | None, str | None]:
    """Returns (normalised base, problem). The base always ends in a ``meter`` segment.

    Users are told to set ``https://api.revenium.ai``, so a base without ``meter`` gets
    ``/meter`` appended, and one with a ``meter`` segment is cut after the last one.
    """
    text = raw.strip()
    try:
        parts = urlsplit(text)
        parts.port  # noqa: B018 - raises ValueError on a malformed port
    except ValueError as exc:
        return None, f"REVENIUM_METERING_BASE_URL {text!r} is not a valid URL ({exc})"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None, (
            f"REVENIUM_METERING_BASE_URL {text!r} must be an http:// or https:// URL with a host"
        )
    problem = None
    if parts.query or parts.fragment:
        problem = f"REVENIUM_METERING_BASE_URL: query string dropped from {text!r}"
    segments = [s for s in parts.path.split("/") if s]
    if "meter" in segments:
        last = len(segments) - 1 - segments[::-1].index("meter")
        segments = segments[: last + 1]
    else:
        segments.append("meter")
    return f"{parts.scheme}://{parts.netloc}/" + "/".join(segments), problem


def _float_env(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None or not raw.strip():
        return default
    try:
        value = float(raw)
    except ValueError:
        logger.warning("%s=%r is not a number; using %s", name, raw, default)
        return default
    if value < 0:
        logger.warning("%s=%r is negative; using %s", name, raw, default)
        return default
    return value


_SWITCH = {"on": "on", "true": "on", "1": "on", "yes": "on"}
_SWITCH.update({"off": "off", "false": "off", "0": "off", "no": "off"})


def _switch_env(name: str) -> str | None:
    """An on/off variable: "on", "off", or None when unset (or not understood)."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return None
    value = _SWITCH.get(raw.lower())
    if value is None:
        logger.warning("%s=%r is neither on nor off; using the default", name, raw)
    return value


def from_environment() -> Settings:
    key = os.environ.get("REVENIUM_METERING_API_KEY", "").strip() or None
    base: str | None = DEFAULT_BASE_URL
    raw_base = os.environ.get("REVENIUM_METERING_BASE_URL", "").strip()
    if raw_base:
        base, problem = normalise_base_url(raw_base)
        if problem:
            (logger.error if base is None else logger.warning)("%s", problem)
    return Settings(
        api_key=key,
        base_url=base,
        shutdown_timeout=_float_env("REVENIUM_SHUTDOWN_TIMEOUT", Settings.shutdown_timeout),
        spool_dir=os.environ.get("REVENIUM_SPOOL_DIR") or None,
        spool_max_mb=_float_env("REVENIUM_SPOOL_MAX_MB", Settings.spool_max_mb),
        ledger=_switch_env("REVENIUM_LEDGER"),
        ledger_path=os.environ.get("REVENIUM_LEDGER_PATH") or None,
    )


_lock = threading.Lock()
_overrides: dict[str, Any] = {}


def current() -> Settings:
    """The environment, read now, with ``configure()`` overrides on top."""
    settings = from_environment()
    with _lock:
        overrides = dict(_overrides)
    return dataclasses.replace(settings, **overrides) if overrides else settings


def set_overrides(**values: Any) -> None:
    unknown = set(values) - {f.name for f in dataclasses.fields(Settings)}
    if unknown:
        raise TypeError(f"configure() got unknown settings: {', '.join(sorted(unknown))}")
    if "base_url" in values and values["base_url"] is not None:
        base, problem = normalise_base_url(str(values["base_url"]))
        if problem:
            (logger.error if base is None else logger.warning)(
                "%s", problem.replace("REVENIUM_METERING_BASE_URL", "configure(base_url=...)")
            )
        values["base_url"] = base
    if "ledger" in values and values["ledger"] is not None:
        ledger = values["ledger"]
        if isinstance(ledger, bool):
            ledger = "on" if ledger else "off"
        if ledger not in ("on", "off"):
            raise ValueError(f"configure(ledger=...) takes 'on', 'off' or None, not {ledger!r}")
        values["ledger"] = ledger
    with _lock:
        _overrides.update(values)


def clear_overrides() -> None:
    with _lock:
        _overrides.clear()
