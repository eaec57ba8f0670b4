"""Shared plumbing for the loopback test servers.

Each double subclasses `_LoopbackServer` and implements `_handle(exchange)`. This module owns the
socket work: port 0 on 127.0.0.1, the accept thread, one thread per connection, HTTP/1.1
keep-alive, chunked writing, and a `stop()` that cuts live connections so it never waits on an idle
keep-alive client or a deliberately stalled answer.
"""

from __future__ import annotations

import contextlib
import socket
import sys
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, TypeVar, cast
from urllib.parse import urlsplit

# How long stop() can wait for the accept loop to notice; small so fixtures stay fast.
_POLL_INTERVAL = 0.02
_JOIN_TIMEOUT = 5.0

_S = TypeVar("_S", bound="_LoopbackServer")


@dataclass(frozen=True)
class _Request:
    method: str
    path: str  # as sent, query string included
    route: str  # path without the query string
    headers: dict[str, str]  # names lower-cased
    body: bytes


class _Exchange:
    """One request and the means to answer it (whole, chunked, or not at all)."""

    def __init__(self, handler: _Handler, request: _Request, stopping: threading.Event) -> None:
        self.request = request
        self.started = False  # the status line has gone out
        self.finished = False
        self._handler = handler
        self._stopping = stopping

    def sleep(self, seconds: float) -> bool:
        """Wait, cut short by stop(); returns False when the server is stopping."""
        if seconds > 0:
            return not self._stopping.wait(seconds)
        return not self._stopping.is_set()

    def send(
        self, status: int, body: bytes = b"", headers: Mapping[str, str] | None = None
    ) -> None:
        """A complete answer with Content-Length (no body on the wire for HEAD)."""
        self._head(status, headers, {"Content-Length": str(len(body))})
        if body and self.request.method != "HEAD":
            self._handler.wfile.write(body)
        self.finished = True

    def send_partial(self, status: int, body: bytes, headers: Mapping[str, str]) -> None:
        """Announce the full Content-Length, send half the body, then cut the connection."""
        self._head(status, headers, {"Content-Length": str(len(body))})
        self._handler.wfile.write(body[: len(body) // 2])
        self.abort()

    def start_chunked(self, status: int, headers: Mapping[str, str]) -> None:
        self._head(status, headers, {"Transfer-Encoding": "chunked"})

    def write_chunk(self, data: bytes) -> None:
        # One write per chunk (TCP_NODELAY is on), so each chunk leaves on its own.
        if data:
            self._handler.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))

    def end_chunked(self) -> None:
        self._handler.wfile.write(b"0\r\n\r\n")
        self.finished = True

    def abort(self) -> None:
        """Close the TCP connection now, whatever was (not) sent."""
        self._handler.close_connection = True
        self.finished = True
        with contextlib.suppress(OSError):
            self._handler.connection.shutdown(socket.SHUT_RDWR)

    def _head(
        self, status: int, headers: Mapping[str, str] | None, framing: Mapping[str, str]
    ) -> None:
        handler = self._handler
        handler.send_response(status)
        fields = {**(headers or {}), **framing}
        if "Connection" in fields and self.request.headers.get("connection", "").lower() == "close":
            fields["Connection"] = "close"  # Go's net/http: the client's close wins
        for name, value in fields.items():
            handler.send_header(name, value)
        handler.end_headers()
        self.started = True


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive and chunked answers

    def setup(self) -> None:
        super().setup()
        # Go sets TCP_NODELAY too; without it small chunks can stall on delayed ACKs.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def send_response(self, code: int, message: str | None = None) -> None:
        # Like Go's net/http: a Date header and no Server header.
        self.send_response_only(code, message)
        self.send_header("Date", self.date_time_string())

    def log_message(self, format: str, *args: Any) -> None:
        pass  # keep test output clean

    def do_GET(self) -> None:
        self._dispatch()

    def do_HEAD(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def do_PUT(self) -> None:
        self._dispatch()

    def do_PATCH(self) -> None:
        self._dispatch()

    def do_DELETE(self) -> None:
        self._dispatch()

    def do_OPTIONS(self) -> None:
        self._dispatch()

    def _dispatch(self) -> None:
        server = cast(_HTTPServer, self.server)
        body = self._read_body()
        if body is None:
            self.close_connection = True
            self.send_error(400, "malformed request body")
            return
        request = _Request(
            method=self.command,
            path=self.path,
            route=urlsplit(self.path).path,
            headers={name.lower(): value for name, value in self.headers.items()},
            body=body,
        )
        exchange = _Exchange(self, request, server.owner._stopping)
        try:
            server.owner._handle(exchange)
        except OSError:
            # The client went away, or stop() cut the connection.
            self.close_connection = True
            return
        except Exception:
            if not exchange.started:
                exchange.send(500, b"test double failed; see the traceback", {})
            self.close_connection = True
            raise
        if not exchange.finished:
            exchange.abort()

    def _read_body(self) -> bytes | None:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return self._read_chunked()
        length = self.headers.get("Content-Length")
        if length is None:
            return b""
        try:
            size = int(length)
        except ValueError:
            return None
        body = self.rfile.read(size)
        return body if len(body) == size else None

    def _read_chunked(self) -> bytes | None:
        parts: list[bytes] = []
        while True:
            line = self.rfile.readline(65537)
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                return None
            if size == 0:
                while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                return b"".join(parts)
            data = self.rfile.read(size + 2)
            if len(data) != size + 2:
                return None
            parts.append(data[:size])


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256  # the default backlog of 5 resets bursts of concurrent clients

    def __init__(self, owner: _LoopbackServer, address: tuple[str, int]) -> None:
        self.owner = owner
        self.accepted = 0
        self._lock = threading.Lock()
        self._closing = False
        self._live: set[socket.socket] = set()
        self._workers: set[threading.Thread] = set()
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        # Our own threads (not ThreadingMixIn's) so stop() can cut and join them with a bound.
        with self._lock:
            if self._closing:
                self.shutdown_request(request)
                return
            self.accepted += 1
            self._live.add(request)
            worker = threading.Thread(
                target=self._serve_connection,
                args=(request, client_address),
                name=f"{type(self.owner).__name__}-conn-{self.accepted}",
                daemon=True,
            )
            self._workers.add(worker)
        worker.start()

    def _serve_connection(self, request: Any, client_address: Any) -> None:
        try:
            self.finish_request(request, client_address)
        except Exception:
            self.handle_error(request, client_address)
        finally:
            self.shutdown_request(request)
            with self._lock:
                self._live.discard(request)
                self._workers.discard(threading.current_thread())

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], OSError):
            return  # a peer that vanished is normal for these servers
        super().handle_error(request, client_address)

    def close_connections(self) -> list[threading.Thread]:
        """Refuse new connections, cut the live ones, and return the threads to join."""
        with self._lock:
            self._closing = True
            live = list(self._live)
            workers = list(self._workers)
        for conn in live:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        return workers


class _LoopbackServer:
    """Base of the test doubles: a real HTTP/1.1 server on 127.0.0.1 with an ephemeral port
    (``address`` binds another host or port: ``revenium-ollama simulate`` serves on one)."""

    def __init__(self, *, address: tuple[str, int] = ("127.0.0.1", 0)) -> None:
        self._address = address
        self._server: _HTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._lifecycle = threading.Lock()
        self._accepted_before = 0  # connections of servers already stopped
        # Between stop_listening() and resume_listening(): a socket bound to the port and not
        # listening, so that connections are refused and nobody else takes the port.
        self._placeholder: socket.socket | None = None

    def start(self: _S) -> _S:
        with self._lifecycle:
            if self._server is None and self._placeholder is None:
                self._serve(self._address)
        return self

    def _serve(self, address: tuple[str, int]) -> None:
        """Listen on ``address`` (port 0: an ephemeral one). Called with ``_lifecycle`` held."""
        self._stopping.clear()
        server = _HTTPServer(self, address)
        thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": _POLL_INTERVAL},
            name=f"{type(self).__name__}-accept",
            daemon=True,
        )
        thread.start()
        self._server, self._thread = server, thread

    def stop(self) -> None:
        """Stop serving and close every connection; idempotent, never waits on a client."""
        with self._lifecycle:
            self._close_server()
            if self._placeholder is not None:
                self._placeholder.close()
                self._placeholder = None

    def _close_server(self) -> None:
        """Called with ``_lifecycle`` held."""
        server, thread = self._server, self._thread
        if server is None or thread is None:
            return
        self._stopping.set()
        self._wake_waiters()
        server.shutdown()
        workers = server.close_connections()
        server.server_close()
        thread.join(_JOIN_TIMEOUT)
        for worker in workers:
            worker.join(_JOIN_TIMEOUT)
        self._accepted_before += server.accepted
        self._server = self._thread = None

    def stop_listening(self) -> None:
        """As a server that went away: live connections are cut and new ones are refused
        (ECONNREFUSED) until ``resume_listening()``, which serves the same port again with the
        state kept (records, modes, canned answers)."""
        with self._lifecycle:
            if self._server is None:
                raise RuntimeError(f"{type(self).__name__} is not listening")
            port = self.port
            self._close_server()
            placeholder = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                # Bound at once, with the same SO_REUSEADDR as the server (the cut connections
                # linger in TIME_WAIT): the port stays ours, and with no listen() nothing is
                # accepted; the kernel answers connection attempts with a reset.
                placeholder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                placeholder.bind((self._address[0], port))
            except OSError:
                placeholder.close()
                raise
            self._placeholder = placeholder

    def resume_listening(self) -> None:
        """Serve again on the port ``stop_listening()`` kept."""
        with self._lifecycle:
            placeholder = self._placeholder
            if placeholder is None:
                raise RuntimeError(f"{type(self).__name__} was not stopped by stop_listening()")
            port = int(placeholder.getsockname()[1])
            placeholder.close()
            self._placeholder = None
            self._serve((self._address[0], port))

    @property
    def running(self) -> bool:
        return self._server is not None

    @property
    def port(self) -> int:
        if self._placeholder is not None:  # not listening for now, the port kept
            return int(self._placeholder.getsockname()[1])
        if self._server is None:
            raise RuntimeError(f"{type(self).__name__} is not started; call start() first")
        return int(self._server.server_address[1])

    @property
    def host(self) -> str:
        """`127.0.0.1:PORT` (the bound address and port)."""
        if self._placeholder is not None:  # not listening for now, the address kept
            address = self._placeholder.getsockname()[0]
        elif self._server is not None:
            address = self._server.server_address[0]
        else:
            raise RuntimeError(f"{type(self).__name__} is not started; call start() first")
        host = address.decode() if isinstance(address, bytes) else address
        return f"{host}:{self.port}"

    @property
    def url(self) -> str:
        """`http://127.0.0.1:PORT` (the bound address), no trailing slash."""
        return f"http://{self.host}"

    @property
    def connections_accepted(self) -> int:
        """TCP connections accepted so far: shows whether clients reuse keep-alive connections."""
        current = self._server.accepted if self._server is not None else 0
        return self._accepted_before + current

    def __enter__(self: _S) -> _S:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _handle(self, exchange: _Exchange) -> None:
        raise NotImplementedError

    def _wake_waiters(self) -> None:
        """Hook: wake handler threads blocked on the subclass's conditions (stop is set)."""
