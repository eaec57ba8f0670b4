"""``revenium-ollama``: read the local usage ledger (report, tail, export), upload it to
Revenium, or run the Ollama simulator. This module parses arguments and dispatches; each
subcommand's work is in ``_commands``."""

from __future__ import annotations

import argparse
import os
import sys
import textwrap
from collections.abc import Sequence
from typing import NoReturn

from revenium_ollama_transport import _config, _ledger

from ._commands import COMMANDS, CommandError, UsageError
from ._prices import PRICES_HELP
from ._report import DIMENSIONS, PERCENTILE_HELP
from ._window import WINDOW_HELP

PROG = "revenium-ollama"

_REPORT_EPILOG = f"""\
columns, per group:
  calls, errors (stop reason ERROR or TIMEOUT, or an HTTP error code), cancelled (stop
  reason CANCELLED), input and output tokens; p50/p95 of the request duration (ms) and of
  the time to first token (ms); prefill tok/s = the input tokens / Ollama's
  prompt_eval_duration and gen tok/s = the output tokens / Ollama's eval_duration, both
  summed over the calls that report those timings (native API answers); load_p50_ms = the
  median of Ollama's load_duration (model loading), load_total_s = its sum.
{textwrap.fill(PERCENTILE_HELP, 88, initial_indent="  ", subsequent_indent="  ")}
  day and hour are UTC (local time with --local). A table ends with a TOTAL row; JSON has
  a "total" object; CSV has the groups only.

{PRICES_HELP}
"""


class _Parser(argparse.ArgumentParser):
    """One line for a usage error, exit status 2 (argparse prints the whole usage)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _dimensions(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in DIMENSIONS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"{text!r}: group by any of {', '.join(DIMENSIONS)} (comma-separated)"
        )
    return list(dict.fromkeys(names))


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be 1 or more")
    return value


def _count(text: str) -> int:
    return 0 if text.strip() == "0" else _positive(text)


def _port(text: str) -> int:
    value = _count(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port (0-65535)")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} must be a finite number >= 0")
    return value


def _window_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--since", metavar="WHEN", help=f"from this moment on: {WINDOW_HELP}")
    parser.add_argument("--until", metavar="WHEN", help="before this moment (same forms)")
    parser.add_argument(
        "--local",
        action="store_true",
        help="read dates and date-times without an offset (and bucket days and hours) in "
        "this machine's time zone instead of UTC",
    )


def build_parser() -> argparse.ArgumentParser:
    common = _Parser(add_help=False)
    common.add_argument(
        "--ledger",
        metavar="PATH",
        help=f"the ledger file (default: REVENIUM_LEDGER_PATH, else {_ledger.default_path()})",
    )
    parser = _Parser(
        prog=PROG,
        description="Read the local usage ledger of revenium-ollama-transport, upload it to "
        "Revenium, or run an Ollama simulator. Exit status: 0 done, 1 failed (or, for "
        "upload, records remain), 2 bad usage.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    commands.required = True
    formatter = argparse.RawDescriptionHelpFormatter

    report = commands.add_parser(
        "report",
        parents=[common],
        help="usage per model, customer, day...: calls, errors, tokens, latency, speed, cost",
        description="Usage grouped by model, organization, product, subscriber, agent, trace,\n"
        "task_type, day or hour, over a time window (default: all time).",
        epilog=_REPORT_EPILOG,
        formatter_class=formatter,
    )
    report.add_argument(
        "--by",
        type=_dimensions,
        default=["model"],
        metavar="DIMS",
        help=f"comma-separated, any of {', '.join(DIMENSIONS)} (default: model); "
        "subscriber is the subscriber's id",
    )
    _window_options(report)
    report.add_argument("--format", choices=("table", "json", "csv"), default="table")
    report.add_argument("--prices", metavar="FILE", help="per-model prices: adds a cost column")
    report.add_argument(
        "--reference",
        metavar="NAME",
        help="an entry of the prices file: adds what the same calls would cost at its prices",
    )

    tail = commands.add_parser(
        "tail",
        parents=[common],
        help="follow new calls as they are recorded, one line each",
        description="Prints the last N calls, then each new one as it lands in the ledger "
        "(time, model, operation, tokens in/out, latency, stop reason, organization and "
        "subscriber when set), until interrupted (Ctrl-C or SIGTERM: exit status 0).",
    )
    tail.add_argument(
        "-n", "--lines", type=_count, default=10, metavar="N", help="show the last N first (10)"
    )
    tail.add_argument(
        "--interval", type=_seconds, default=0.5, metavar="S", help="seconds between polls (0.5)"
    )

    export = commands.add_parser(
        "export",
        parents=[common],
        help="all records of a window as JSON Lines or CSV",
        description="Every column of every record in the window, oldest first. JSON Lines: "
        "one object per record, its wire and details as objects; CSV: a header, then a line "
        "per record, wire and details as JSON text.",
    )
    _window_options(export)
    export.add_argument("--format", choices=("jsonl", "csv"), default="jsonl")
    export.add_argument("--output", "-o", metavar="FILE", help="write there, not to stdout")

    upload = commands.add_parser(
        "upload",
        parents=[common],
        help="send recorded calls to Revenium (REVENIUM_METERING_API_KEY)",
        description="Sends the records not uploaded yet (and not already sent live) to the "
        "metering API of REVENIUM_METERING_BASE_URL with the key in "
        "REVENIUM_METERING_API_KEY, oldest first, several at a time, each with its "
        "transaction id as Idempotency-Key. Each stored record is marked uploaded as it "
        "goes, so an interrupted upload resumes where it stopped. Transient failures are "
        "retried (honouring Retry-After); a record still failing stops the run; a record "
        "refused (4xx) is counted and marked with the status (upload_refused), and later "
        "runs leave it alone unless --retry-refused; a refused key (401/403) stops the run. "
        "Exit status 1 when records remain or were refused.",
    )
    upload.add_argument(
        "--all",
        action="store_true",
        dest="include_sent_live",
        help="also records already sent live (the API stores a record once)",
    )
    upload.add_argument(
        "--retry-refused",
        action="store_true",
        help="also records the API refused at an earlier upload",
    )
    upload.add_argument("--dry-run", action="store_true", help="count what would be sent")
    upload.add_argument(
        "--concurrency", type=_positive, default=16, metavar="N", help="requests in flight (16)"
    )
    upload.add_argument(
        "--max-attempts", type=_positive, default=6, metavar="N", help="attempts per record (6)"
    )
    upload.add_argument(
        "--max-retry-wait",
        type=_seconds,
        default=30.0,
        metavar="S",
        help="longest wait between attempts, in seconds (30)",
    )

    simulate = commands.add_parser(
        "simulate",
        help="serve an Ollama simulator (native and OpenAI-compatible API)",
        description="Answers Ollama's native and OpenAI-compatible API like Ollama, without a "
        "model, until interrupted (Ctrl-C or SIGTERM: exit status 0). Prints the URL it "
        "listens on.",
    )
    simulate.add_argument("--host", default="127.0.0.1", help="address to bind (127.0.0.1)")
    simulate.add_argument(
        "--port", type=_port, default=11434, help="port (11434; 0: any free port)"
    )
    simulate.add_argument("--reply", metavar="TEXT", help="the answer's text, a token a word")
    simulate.add_argument(
        "--model", metavar="NAME", help="the model the answers name (default: the request's)"
    )
    simulate.add_argument(
        "--prompt-eval-count", type=_count, metavar="N", help="input tokens reported (26)"
    )
    simulate.add_argument(
        "--eval-count", type=_count, metavar="N", help="output tokens reported (the reply's)"
    )
    simulate.add_argument(
        "--chunk-delay", type=_seconds, default=0.0, metavar="S", help="seconds between tokens"
    )
    return parser


def ledger_path(option: str | None) -> str:
    """``--ledger``, else ``REVENIUM_LEDGER_PATH`` (the package's setting), else the default."""
    return str(_ledger.resolve_path(option or _config.current().ledger_path))


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if hasattr(args, "ledger"):
        args.ledger = ledger_path(args.ledger)
    try:
        return COMMANDS[args.command](args)
    except UsageError as exc:
        parser.exit(2, f"{PROG} {args.command}: error: {exc}\n")
    except CommandError as exc:
        print(f"{PROG} {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # Ctrl-C in a command that does not wait for it
        return 130
    except BrokenPipeError:
        # The reader went away (``| head``): nothing more to say, and nowhere to say it.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
