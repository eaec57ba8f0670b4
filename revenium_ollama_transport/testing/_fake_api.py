"""`FakeMeteringAPI`: a local stand-in for Revenium's metering API (POST .../v2/ai/completions)."""

from __future__ import annotations

import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, Literal

import orjson

from ._metering_rules import validate_record
from ._server import _Exchange, _LoopbackServer

Mode = Literal["normal", "hang", "down", "unavailable"]
_MODES: tuple[Mode, ...] = ("normal", "hang", "down", "unavailable")
_ENDPOINT_SUFFIX = "/v2/ai/completions"
_JSON = {"Content-Type": "application/json"}
_Log = Callable[[int | None, str | None], None]  # appends to `received`; needs the lock held


@dataclass(frozen=True)
class ReceivedMetering:
    """One request as the fake received it, and what it answered."""

    path: str
    headers: dict[str, str]  # names lower-cased
    body: bytes
    record: dict[str, Any] | None  # the body parsed, when it is a JSON object
    status: int | None  # None: not answered (mode "hang" or "down")
    time: float  # time.monotonic() at arrival, to measure a client's back-off
    error: str | None = None  # why the record was refused, when it was


@dataclass(frozen=True)
class _Canned:
    status: int
    body: bytes
    headers: dict[str, str]


def _dumps(doc: object) -> bytes:
    return orjson.dumps(doc)


def _printable_ascii(key: str) -> bool:
    return 1 <= len(key) <= 255 and all(" " <= ch <= "~" for ch in key)


class FakeMeteringAPI(_LoopbackServer):
    """A real HTTP/1.1 server on 127.0.0.1 (ephemeral port) that accepts metering records.

    `url` is what a user sets as REVENIUM_METERING_BASE_URL. POST to any path ending in
    `/v2/ai/completions` is the endpoint; other paths answer 404, other methods 405. A record is
    validated like the real API (a violation answers 400 naming the field and is not stored), then
    de-duplicated by `Idempotency-Key` and by `transactionId`, then stored and answered 201.
    """

    def __init__(
        self, *, expected_api_key: str | None = None, allow_unknown_fields: bool = False
    ) -> None:
        super().__init__()
        self.expected_api_key = expected_api_key  # when set, other x-api-key values get 401
        self.allow_unknown_fields = allow_unknown_fields  # else an unlisted field gets 400
        self.latency = 0.0  # seconds to wait before answering each request, as a remote API
        self._cond = threading.Condition()
        self._mode: Mode = "normal"
        self._unavailable = _Canned(503, b"", {})  # the answer of mode "unavailable"
        self._canned: deque[_Canned] = deque()
        self._records: list[dict[str, Any]] = []
        self._received: list[ReceivedMetering] = []
        self._by_key: dict[str, tuple[dict[str, Any], bytes]] = {}
        self._by_transaction: dict[str, bytes] = {}

    @property
    def records(self) -> list[dict[str, Any]]:
        """Stored records in arrival order, each once."""
        with self._cond:
            return list(self._records)

    @property
    def received(self) -> list[ReceivedMetering]:
        """Every request, refused and unanswered ones included, in arrival order."""
        with self._cond:
            return list(self._received)

    @property
    def mode(self) -> Mode:
        with self._cond:
            return self._mode

    def set_mode(
        self, mode: Mode, *, status: int = 503, retry_after: float | str | None = None
    ) -> None:
        """Switch between "normal", "hang" (read requests, never answer), "down" (close
        connections without answering) and "unavailable" (answer every request `status`, with
        `Retry-After: retry_after` when given, and store nothing: 503 for an outage, 429 for
        a rate limit). For connections refused outright, see `stop_listening()`.

        Requests held by "hang" are dropped unanswered when the mode changes or on stop().
        """
        if mode not in _MODES:
            raise ValueError(f"mode must be one of {_MODES}, not {mode!r}")
        if mode != "unavailable" and (status != 503 or retry_after is not None):
            raise ValueError('status and retry_after are for mode "unavailable"')
        answer = _canned(status, retry_after, {"error": _phrase(status), "status": status}, None)
        with self._cond:
            self._mode = mode
            self._unavailable = answer
            self._cond.notify_all()

    def respond_with(
        self,
        status: int,
        times: int = 1,
        retry_after: float | str | None = None,
        body: Mapping[str, Any] | str | bytes | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        """Answer the next `times` endpoint requests with `status`, storing nothing.

        `body` defaults to `{"error": ...}` (for 409, `idempotency_key_in_progress`). A canned 2xx
        mimics the real server's silent drop of an over-long record.
        """
        if times < 1:
            raise ValueError("times must be >= 1")
        if body is None:
            error = "idempotency_key_in_progress" if status == 409 else _phrase(status)
            body = {"error": error, "status": status}
        answer = _canned(status, retry_after, body, headers)
        with self._cond:
            self._canned.extend(answer for _ in range(times))

    def wait_for_records(self, n: int, timeout: float = 10.0) -> list[dict[str, Any]]:
        """Wait until at least `n` records are stored; returns them all. TimeoutError otherwise."""
        with self._cond:
            if not self._cond.wait_for(lambda: len(self._records) >= n, timeout):
                raise TimeoutError(self._timeout_message(f"{n} stored record(s)", timeout))
            return list(self._records)

    def wait_for_received(self, n: int, timeout: float = 10.0) -> list[ReceivedMetering]:
        """Wait until at least `n` requests arrived, whatever the answer. TimeoutError otherwise."""
        with self._cond:
            if not self._cond.wait_for(lambda: len(self._received) >= n, timeout):
                raise TimeoutError(self._timeout_message(f"{n} request(s)", timeout))
            return list(self._received)

    def clear(self) -> None:
        """Forget records, received requests, canned answers and de-duplication state."""
        with self._cond:
            self._records.clear()
            self._received.clear()
            self._canned.clear()
            self._by_key.clear()
            self._by_transaction.clear()

    def _timeout_message(self, wanted: str, timeout: float) -> str:
        answers = [
            f"{r.status if r.status is not None else 'no answer'}"
            + (f" ({r.error})" if r.error else "")
            for r in self._received
        ]
        return (
            f"FakeMeteringAPI: expected {wanted} within {timeout}s; "
            f"stored {len(self._records)}, received {len(self._received)} request(s) "
            f"answered {answers}, mode {self._mode!r}"
        )

    def _wake_waiters(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def _handle(self, exchange: _Exchange) -> None:
        request = exchange.request
        arrived = time.monotonic()
        try:
            parsed: Any = orjson.loads(request.body) if request.body else None
        except orjson.JSONDecodeError:
            parsed = None
        record = parsed if isinstance(parsed, dict) else None

        def log(status: int | None, error: str | None) -> None:
            self._received.append(
                ReceivedMetering(
                    request.path, request.headers, request.body, record, status, arrived, error
                )
            )
            self._cond.notify_all()

        with self._cond:
            mode = self._mode
            unavailable = self._unavailable
            if mode == "unavailable":
                log(unavailable.status, "unavailable")
            elif mode != "normal":
                log(None, None)
            if mode == "hang":
                self._cond.wait_for(lambda: self._mode != "hang" or self._stopping.is_set())
        if mode == "unavailable":
            exchange.send(unavailable.status, unavailable.body, unavailable.headers)
            return
        if mode != "normal":
            exchange.abort()
            return

        if self.latency and not exchange.sleep(self.latency):
            exchange.abort()
            return
        if not request.route.endswith(_ENDPOINT_SUFFIX):
            self._refuse(exchange, log, 404, "not_found", f"no endpoint at {request.route}")
            return
        if request.method != "POST":
            self._refuse(exchange, log, 405, "method_not_allowed", "use POST")
            return
        with self._cond:
            canned = self._canned.popleft() if self._canned else None
            if canned is not None:
                log(canned.status, "canned answer")
        if canned is not None:
            exchange.send(canned.status, canned.body, canned.headers)
            return
        expected_key = self.expected_api_key
        if expected_key is not None and request.headers.get("x-api-key") != expected_key:
            self._refuse(exchange, log, 401, "unauthorized", "invalid or missing x-api-key")
            return
        key = request.headers.get("idempotency-key")
        if key is not None and not _printable_ascii(key):
            message = "Idempotency-Key must be 1-255 printable ASCII characters"
            self._refuse(exchange, log, 400, "invalid_field", message, field="Idempotency-Key")
            return
        if parsed is None and request.body:
            self._refuse(exchange, log, 400, "invalid_json", "the body is not valid JSON")
            return
        violation = validate_record(parsed, allow_unknown_fields=self.allow_unknown_fields)
        if violation is not None:
            field, message = violation
            self._refuse(exchange, log, 400, "invalid_field", message, field=field)
            return
        assert record is not None  # validate_record refuses anything but an object
        self._store(exchange, log, record, key)

    def _store(
        self, exchange: _Exchange, log: _Log, record: dict[str, Any], key: str | None
    ) -> None:
        transaction = str(record["transactionId"])
        with self._cond:
            if key is not None and key in self._by_key:
                first, answer = self._by_key[key]
                if first != record:
                    log(409, "idempotency_key_mismatch")
                    conflict = {"error": "idempotency_key_mismatch", "status": 409}
                    answer, status = _dumps(conflict), 409
                else:
                    log(201, None)
                    status = 201
            elif transaction in self._by_transaction:
                answer, status = self._by_transaction[transaction], 201
                if key is not None:
                    self._by_key[key] = (record, answer)
                log(201, None)
            else:
                answer = _dumps({"id": str(uuid.uuid4()), "resourceType": "ai_completion"})
                status = 201
                self._records.append(record)
                self._by_transaction[transaction] = answer
                if key is not None:
                    self._by_key[key] = (record, answer)
                log(201, None)
        exchange.send(status, answer, _JSON)

    def _refuse(
        self,
        exchange: _Exchange,
        log: _Log,
        status: int,
        error: str,
        message: str,
        *,
        field: str | None = None,
    ) -> None:
        doc: dict[str, Any] = {"error": error, "status": status, "message": message}
        if field is not None:
            doc["field"] = field
        with self._cond:
            log(status, message)
        exchange.send(status, _dumps(doc), _JSON)


def _canned(
    status: int,
    retry_after: float | str | None,
    body: Mapping[str, Any] | str | bytes,
    headers: Mapping[str, str] | None,
) -> _Canned:
    if isinstance(body, bytes):
        payload = body
    elif isinstance(body, str):
        payload = body.encode()
    else:
        payload = _dumps(dict(body))
    extra = {**_JSON, **(headers or {})}
    if retry_after is not None:
        if isinstance(retry_after, float) and retry_after.is_integer():
            retry_after = int(retry_after)
        extra["Retry-After"] = str(retry_after)
    return _Canned(status, payload, extra)


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase.lower().replace(" ", "_")
    except ValueError:
        return "error"
