"""The subcommands: each takes the parsed arguments and returns the exit status, raising
``UsageError`` (status 2) or ``CommandError`` (status 1) with a one-line message."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sqlite3
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TextIO

from revenium_ollama_transport import _config, _ledger
from revenium_ollama_transport._http import sender_for

from . import _columns, _export, _format, _prices, _rows, _simulate, _tail, _upload
from ._progress import Progress
from ._report import aggregate
from ._stop import until_signalled
from ._window import Window, WindowError, window


class CommandError(Exception):
    """A failure to report in one line (exit status 1)."""


class UsageError(Exception):
    """Options that cannot work together or cannot be read (exit status 2)."""


@contextlib.contextmanager
def _ledger_connection(path: str) -> Iterator[sqlite3.Connection]:
    try:
        connection = _ledger.connect(Path(path), create=False)
    except _ledger.LedgerError as exc:
        raise CommandError(str(exc)) from None
    try:
        yield connection
    except sqlite3.Error as exc:
        raise CommandError(f"reading the ledger at {path}: {exc}") from None
    finally:
        connection.close()


def _window(args: argparse.Namespace) -> Window:
    try:
        return window(args.since, args.until, time.time(), args.local)
    except WindowError as exc:
        raise UsageError(str(exc)) from None


def _costing(args: argparse.Namespace) -> _columns.Costing | None:
    if args.prices is None:
        if args.reference is not None:
            raise UsageError("--reference needs --prices (the file holding its prices)")
        return None
    try:
        prices = _prices.load(Path(args.prices))
    except _prices.PricesError as exc:
        raise CommandError(str(exc)) from None
    if args.reference is None:
        return _columns.Costing(prices)
    reference = prices.models.get(args.reference)
    if reference is None:
        raise CommandError(
            f"--reference {args.reference!r} is not in {args.prices} "
            f"(its models: {', '.join(sorted(prices.models))})"
        )
    return _columns.Costing(prices, args.reference, reference)


def report(args: argparse.Namespace) -> int:
    span = _window(args)
    costing = _costing(args)
    with _ledger_connection(args.ledger) as connection:
        result = aggregate(_rows.report_rows(connection, span), args.by, args.local)
    out = sys.stdout
    if args.format == "json":
        out.write(_format.json_text(_columns.json_document(result, costing, span.describe())))
        return 0
    shown = _columns.view(result, costing, table=args.format == "table")
    if args.format == "csv":
        _format.csv_rows(shown.headers, shown.rows, out)
        notes: TextIO = sys.stderr
    else:
        _format.table(shown.headers, shown.rows, out)
        notes = out
    for note in shown.notes:
        notes.write(note + "\n")
    return 0


def tail(args: argparse.Namespace) -> int:
    with _ledger_connection(args.ledger) as connection, until_signalled():
        _tail.follow(connection, sys.stdout, args.lines, args.interval)
    return 0


def export(args: argparse.Namespace) -> int:
    span = _window(args)
    write = _export.jsonl if args.format == "jsonl" else _export.csv
    with _ledger_connection(args.ledger) as connection:
        rows = _rows.export_rows(connection, span)
        if args.output is None:
            write(rows, sys.stdout)
            return 0
        try:
            with open(args.output, "w", encoding="utf-8", newline="") as file:
                count = write(rows, file)
        except OSError as exc:
            raise CommandError(f"cannot write {args.output}: {exc.strerror or exc}") from None
    print(f"{count} record(s) written to {args.output}", file=sys.stderr)
    return 0


def upload(args: argparse.Namespace) -> int:
    settings = _config.current()
    endpoint = settings.endpoint
    if endpoint is None:
        raise CommandError("REVENIUM_METERING_BASE_URL is not a usable http(s) URL")
    with _ledger_connection(args.ledger) as connection:
        last = _rows.last_id(connection)
        pending = _rows.Pending(sent_live=args.include_sent_live, refused=args.retry_refused)
        total = _rows.count_pending(connection, pending)
        if args.dry_run:
            print(f"{total} record(s) would be uploaded to {endpoint}")
            if not pending.sent_live:
                live = _rows.count_pending(connection, _rows.Pending(True, pending.refused))
                if live > total:
                    print(f"({live - total} more were sent live; --all includes them)")
            if not pending.refused:
                again = _rows.count_pending(connection, _rows.Pending(pending.sent_live, True))
                if again > total:
                    print(
                        f"({again - total} more were refused by an earlier upload; "
                        "--retry-refused includes them)"
                    )
            return 0
        if not settings.api_key:
            raise CommandError(
                "REVENIUM_METERING_API_KEY is not set: nothing can be uploaded "
                "(--dry-run counts what would go)"
            )
        if total == 0:
            print("nothing to upload")
            return 0
        options = _upload.Options(
            pending=pending,
            concurrency=args.concurrency,
            max_attempts=args.max_attempts,
            max_retry_wait=args.max_retry_wait,
        )
        sender = sender_for(endpoint, settings.request_timeout, args.concurrency)
        progress = Progress("upload", total, sys.stderr)
        outcome = asyncio.run(
            _upload.upload(connection, sender, settings.api_key, options, progress, last, total)
        )
    return _summarise(outcome, endpoint)


def _summarise(outcome: _upload.Outcome, endpoint: str) -> int:
    print(
        f"uploaded {outcome.uploaded}, refused {outcome.refused_count}, "
        f"remaining {outcome.remaining} (to {endpoint})"
    )
    if outcome.refused:
        statuses = ", ".join(f"HTTP {s}: {n}" for s, n in sorted(outcome.refused.items()))
        print(
            f"refused records stay in the ledger, marked with the status and not sent again "
            f"unless --retry-refused ({statuses}); "
            f"the first: {outcome.refusal_example}",
            file=sys.stderr,
        )
    if outcome.stopped == "key":
        raise CommandError(
            f"the metering API refused the API key ({outcome.stop_reason}); check "
            "REVENIUM_METERING_API_KEY. Nothing more was sent"
        )
    if outcome.stopped == "unavailable":
        raise CommandError(
            f"the metering API is not accepting records (after {outcome.stop_reason}); "
            "stopped: run upload again to resume"
        )
    if outcome.stopped == "interrupted":
        print("interrupted: run upload again to resume", file=sys.stderr)
    return 0 if outcome.remaining == 0 and not outcome.refused else 1


def simulate(args: argparse.Namespace) -> int:
    answer = _simulate.reply(
        args.reply, args.prompt_eval_count, args.eval_count, args.chunk_delay, args.model
    )
    try:
        with until_signalled():
            _simulate.serve(args.host, args.port, answer, sys.stdout)
    except OSError as exc:
        raise CommandError(f"cannot listen on {args.host}:{args.port}: {exc}") from None
    return 0


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "report": report,
    "tail": tail,
    "export": export,
    "upload": upload,
    "simulate": simulate,
}
