"""One HTTP exchange on a fresh socket, read back with its exact chunk framing: what the
test doubles put on the wire, which no HTTP client shows."""

from __future__ import annotations

import socket
from typing import Any

import orjson


class RawResponse:
    """``chunks``: the HTTP chunks as framed; ``complete``: the terminating zero-length
    chunk arrived; ``body``: the chunks joined (or the body as sent, when not chunked)."""

    def __init__(self, data: bytes) -> None:
        head, _, rest = data.partition(b"\r\n\r\n")
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        self.status = int(status_line.split()[1])
        self.headers = {
            name.strip().lower(): value.strip()
            for name, _, value in (line.partition(":") for line in header_lines)
        }
        self.chunks: list[bytes] = []
        self.complete = False
        self.body = rest
        if self.headers.get("transfer-encoding") == "chunked":
            while rest:
                size_line, _, rest = rest.partition(b"\r\n")
                size = int(size_line, 16)
                if size == 0:
                    self.complete = rest == b"\r\n"
                    break
                self.chunks.append(rest[:size])
                assert rest[size : size + 2] == b"\r\n"
                rest = rest[size + 2 :]
            self.body = b"".join(self.chunks)

    def lines(self) -> list[dict[str, Any]]:
        """An NDJSON stream's objects, one per chunk."""
        return [orjson.loads(chunk) for chunk in self.chunks]

    def data(self) -> list[Any]:
        """The `data:` payloads of an SSE body ("\\n" framing), JSON-decoded except [DONE]."""
        assert self.body.endswith(b"\n\n")
        payloads = []
        for frame in self.body[:-2].split(b"\n\n"):
            line = frame.split(b"\n")[-1]
            assert line.startswith(b"data: ")
            value = line[len(b"data: ") :]
            payloads.append(value.decode() if value == b"[DONE]" else orjson.loads(value))
        return payloads


def raw_exchange(port: int, method: str, path: str, body: bytes = b"") -> RawResponse:
    """Sends one request to 127.0.0.1:``port`` and reads the answer until the server closes."""
    head = (
        f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    data = b""
    with socket.create_connection(("127.0.0.1", port), timeout=5.0) as conn:
        conn.sendall(head.encode() + body)
        while part := conn.recv(65536):
            data += part
    return RawResponse(data)
