"""``report --prices FILE``: per-model prices (TOML or JSON), and the cost of a group's usage
in exact decimal arithmetic (numbers are read as ``Decimal``, never as floats)."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation, localcontext
from pathlib import Path
from typing import Any

from ._report import ModelUsage

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

PRICE_KEYS = ("input_per_million", "output_per_million", "gpu_hour")
DEFAULT_CURRENCY = "USD"
_NS_PER_HOUR = 3_600_000_000_000

PRICES_HELP = """\
prices file (--prices), TOML or JSON (by its suffix: .json is JSON, anything else TOML):

  currency = "USD"                   # optional, default USD: a label, nothing is converted

  [models."llama3.2"]                # the model name as Ollama reports it
  gpu_hour = "1.20"                  # price per GPU-hour of Ollama's total_duration
                                     # (the request's duration where Ollama gave none)
  [models."qwen2.5:0.5b"]
  input_per_million = 0.02           # price per million input (prompt) tokens
  output_per_million = 0.08          # price per million output tokens
  [models."gpt-4o-mini"]             # a hosted model, as a --reference
  input_per_million = 0.15
  output_per_million = 0.60

  JSON: {"currency": "USD", "models": {"llama3.2": {"gpu_hour": "1.20"}, ...}}

An entry has any of the three prices; its cost is their sum. Prices may be numbers or
strings; either way they are read as exact decimals. A model matches its entry by its
exact name, else by its name without the tag (llama3.2:latest -> llama3.2). A group with
a call of a model that has no entry gets no cost (blank, with a note), not a partial one.
--reference NAME adds the cost of the same calls at entry NAME's prices (its token prices
on the same tokens, its gpu_hour on the same durations). Costs are computed exactly and
rounded half-to-even only for display: 4 decimals in the table, 6 in json and csv (JSON
carries them as strings, to stay exact)."""


class PricesError(ValueError):
    """A prices file that cannot be used; the message names the file and the problem."""


@dataclass(frozen=True)
class Price:
    input_per_million: Decimal | None = None
    output_per_million: Decimal | None = None
    gpu_hour: Decimal | None = None

    def cost(self, usage: ModelUsage) -> Decimal:
        """Exact, but for the one division of GPU time into hours (40 significant digits)."""
        total = Decimal(0)
        if self.input_per_million is not None:
            total += (usage.input_tokens * self.input_per_million).scaleb(-6)
        if self.output_per_million is not None:
            total += (usage.output_tokens * self.output_per_million).scaleb(-6)
        if self.gpu_hour is not None:
            with localcontext() as context:
                context.prec = 40
                total += self.gpu_hour * usage.busy_ns / _NS_PER_HOUR
        return total


@dataclass(frozen=True)
class Prices:
    currency: str
    models: Mapping[str, Price]

    def find(self, model: str) -> Price | None:
        """The entry of ``model``: its exact name, else its name without the ``:tag``."""
        price = self.models.get(model)
        if price is None and ":" in model:
            price = self.models.get(model.rpartition(":")[0])
        return price

    def cost(self, usage: Mapping[str, ModelUsage]) -> tuple[Decimal | None, list[str]]:
        """The cost of a group's usage, and the models without a price (then no cost)."""
        unpriced = sorted(model for model in usage if self.find(model) is None)
        if unpriced:
            return None, unpriced
        total = sum((self._priced(model).cost(u) for model, u in usage.items()), Decimal(0))
        return total, []

    def _priced(self, model: str) -> Price:
        price = self.find(model)
        assert price is not None
        return price


def reference_cost(price: Price, usage: Iterable[ModelUsage]) -> Decimal:
    """What the same calls would have cost at ``price``, whatever their model."""
    return sum((price.cost(u) for u in usage), Decimal(0))


def _decimal(value: object, where: str) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, (int, str, Decimal)):
        raise PricesError(f"{where} must be a number, not {value!r}")
    try:
        number = Decimal(value.strip() if isinstance(value, str) else value)
    except InvalidOperation:
        raise PricesError(f"{where} must be a number, not {value!r}") from None
    if not number.is_finite() or number < 0:
        raise PricesError(f"{where} must be a finite number >= 0, not {value!r}")
    return number


def parse(document: object) -> Prices:
    """Prices from a parsed file (floats already read as ``Decimal``); ``PricesError``."""
    if not isinstance(document, dict):
        raise PricesError("the file must hold a table (TOML) or an object (JSON)")
    unknown = set(document) - {"currency", "models"}
    if unknown:
        raise PricesError(f"unknown key(s) {', '.join(sorted(unknown))}: expected currency, models")
    currency = document.get("currency", DEFAULT_CURRENCY)
    if not isinstance(currency, str) or not currency.strip():
        raise PricesError(f"currency must be a non-empty string, not {currency!r}")
    models = document.get("models")
    if not isinstance(models, dict) or not models:
        raise PricesError('no models: expected a [models."NAME"] table per model')
    prices: dict[str, Price] = {}
    for name, entry in models.items():
        prices[name] = _entry(name, entry)
    return Prices(currency.strip(), prices)


def _entry(name: str, entry: object) -> Price:
    where = f"models.{json.dumps(name)}"
    if not isinstance(entry, dict):
        raise PricesError(f"{where} must be a table of prices ({', '.join(PRICE_KEYS)})")
    unknown = set(entry) - set(PRICE_KEYS)
    if unknown:
        raise PricesError(
            f"{where}: unknown key(s) {', '.join(sorted(unknown))}; "
            f"expected {', '.join(PRICE_KEYS)}"
        )
    if not entry:
        raise PricesError(f"{where} has no price: give any of {', '.join(PRICE_KEYS)}")
    values = {key: _decimal(value, f"{where}.{key}") for key, value in entry.items()}
    return Price(**values)


def load(path: Path) -> Prices:
    """Reads ``path`` (JSON when it ends in ``.json``, else TOML); ``PricesError``."""
    try:
        with path.open("rb") as file:
            document: Any
            if path.suffix.lower() == ".json":
                document = json.load(file, parse_float=Decimal)
            else:
                document = tomllib.load(file, parse_float=Decimal)
    except OSError as exc:
        raise PricesError(f"cannot read the prices file {path}: {exc.strerror or exc}") from exc
    except (ValueError, tomllib.TOMLDecodeError) as exc:  # JSONDecodeError is a ValueError
        raise PricesError(f"the prices file {path} is not valid: {exc}") from exc
    try:
        return parse(document)
    except PricesError as exc:
        raise PricesError(f"the prices file {path}: {exc}") from exc
