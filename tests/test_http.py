"""The metering API's HTTP client against raw servers that answer in every framing."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from revenium_ollama_transport._http import (
    DirectSender,
    ProxiedSender,
    SendError,
    parse_answer,
    proxy_for,
    sender_for,
)

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
Serve = Callable[[Handler], Awaitable[tuple["RawServer", str]]]


async def read_request(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    return head, await reader.readexactly(length)


class RawServer:
    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.requests: list[tuple[bytes, bytes]] = []

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            await self.handler(reader, writer)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    servers: list[asyncio.Server] = []

    async def start(handler: Handler) -> tuple[RawServer, str]:
        raw = RawServer(handler)
        server = await asyncio.start_server(raw._serve, "127.0.0.1", 0)
        servers.append(server)
        port = server.sockets[0].getsockname()[1]
        return raw, f"http://127.0.0.1:{port}/meter/v2/ai/completions"

    yield start
    for server in servers:
        server.close()
        await server.wait_closed()


def keep_alive(answers: list[bytes], log: list[tuple[bytes, bytes]]) -> Handler:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            log.append(await read_request(reader))
            writer.write(
                answers.pop(0)
                if answers
                else b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\n{}"
            )
            await writer.drain()

    return handler


# --- parse_answer (pure): every way an answer can be cut into reads ----------------------

# (answer, status, body, reusable); each answer is complete, and framed by itself unless
# the connection's end delimits it (reusable False and no length).
FRAMED = [
    (b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\n{}", 201, b"{}", True),
    (b"HTTP/1.1 204 No Content\r\nX-A: b\r\n\r\n", 204, b"", True),
    (b"HTTP/1.1 400 Bad\r\nContent-Length: 0\r\nConnection: close\r\n\r\n", 400, b"", False),
    (b"HTTP/1.0 201 Created\r\nContent-Length: 3\r\n\r\nabc", 201, b"abc", False),
    (
        b"HTTP/1.1 429 Slow\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-T: 1\r\n\r\n",
        429,
        b"hello world",
        True,
    ),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 200, b"", True),
    # Field names in any case, blanks around values; a field whose name only ends like a
    # framing one frames nothing.
    (
        b"HTTP/1.1 202 Accepted\r\nX-Content-Length: 99\r\ncontent-LENGTH:\t 3 \r\n"
        b"CONNECTION:  Close \r\n\r\nabc",
        202,
        b"abc",
        False,
    ),
    (
        b"HTTP/1.1 200 OK\r\nX-Connection: close\r\nTransfer-encoding: gzip, CHUNKED\r\n\r\n"
        b"1\r\nx\r\n0\r\n\r\n",
        200,
        b"x",
        True,
    ),
]
UNTIL_CLOSE = b"HTTP/1.0 500 Oops\r\n\r\nbody until close"


@given(st.sampled_from(FRAMED), st.binary(max_size=40))
def test_parse_answer_waits_for_the_whole_answer_and_stops_at_its_end(
    case: tuple[bytes, int, bytes, bool], after: bytes
) -> None:
    answer, status, body, reusable = case
    for cut in range(len(answer)):
        assert parse_answer(answer[:cut], eof=False) is None, cut
        with pytest.raises(SendError):  # the server closed mid-answer
            parse_answer(answer[:cut], eof=True)
    parsed = parse_answer(answer + after, eof=False)  # whatever follows is not its
    assert parsed is not None
    reply, taken, may_reuse = parsed
    assert (reply.status, reply.body, taken, may_reuse) == (status, body, len(answer), reusable)


def test_parse_answer_until_close() -> None:
    for cut in range(len(UNTIL_CLOSE) + 1):
        assert parse_answer(UNTIL_CLOSE[:cut], eof=False) is None
    parsed = parse_answer(UNTIL_CLOSE, eof=True)
    assert parsed is not None
    reply, taken, reusable = parsed
    assert (reply.status, reply.body, taken, reusable) == (500, b"body until close", 37, False)


@given(st.binary(max_size=200))
def test_parse_answer_never_fails_other_than_with_send_error(data: bytes) -> None:
    for eof in (False, True):
        try:
            parse_answer(b"HTTP/1.1 200 OK\r\n" + data, eof)
            parse_answer(data, eof)
        except SendError:
            pass


def test_an_answers_headers_are_all_there_when_read() -> None:
    parsed = parse_answer(
        b"HTTP/1.1 429 Too Many\r\nRetry-After:  7 \r\nX-Should-Retry: true\r\n"
        b"Content-Length: 2\r\nx-empty:\r\n\r\n{}",
        eof=False,
    )
    assert parsed is not None
    reply = parsed[0]
    assert reply.headers == {
        "retry-after": "7",
        "x-should-retry": "true",
        "content-length": "2",
        "x-empty": "",
    }
    assert reply.headers is reply.headers  # parsed once


def test_parse_answer_refuses_an_endless_head() -> None:
    with pytest.raises(SendError, match="too large"):
        parse_answer(b"HTTP/1.1 200 OK\r\n" + b"X: y\r\n" * 20_000, eof=False)


async def test_content_length_answers_reuse_one_connection(serve: Serve) -> None:
    log: list[tuple[bytes, bytes]] = []
    raw, url = await serve(keep_alive([], log))
    sender = DirectSender(url, timeout=5)
    headers = {"x-api-key": "k"}
    for i in range(5):
        if i == 3:  # the same mapping changed: its new value is sent from then on
            headers["x-api-key"] = "k2"
        reply = await sender.post(b'{"n":%d}' % i, headers, f"id{i}")
        assert (reply.status, reply.body) == (201, b"{}")
    await sender.aclose()
    assert raw.connections == 1
    head, body = log[2]
    assert head.startswith(b"POST /meter/v2/ai/completions HTTP/1.1\r\n")
    assert b"\r\nx-api-key: k\r\n" in head
    assert b"\r\nidempotency-key: id2\r\n" in head
    assert b"\r\nContent-Length: 7\r\n" in head
    assert b"\r\nHost: 127.0.0.1:" in head
    assert body == b'{"n":2}'
    assert [b"\r\nx-api-key: k2\r\n" in h for h, _ in log] == [False] * 3 + [True] * 2
    assert [h.count(b"idempotency-key") for h, _ in log] == [1] * 5


async def test_chunked_answer_with_trailer(serve: Serve) -> None:
    answer = (
        b"HTTP/1.1 429 Too Many Requests\r\nTransfer-Encoding: chunked\r\nRetry-After: 3\r\n"
        b"X-Should-Retry: true\r\n\r\n5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-T: 1\r\n\r\n"
    )
    log: list[tuple[bytes, bytes]] = []
    raw, url = await serve(keep_alive([answer], log))
    sender = DirectSender(url, timeout=5)
    reply = await sender.post(b"{}", {})
    assert (reply.status, reply.body) == (429, b"hello world")
    assert reply.headers["retry-after"] == "3"
    assert reply.headers["x-should-retry"] == "true"
    assert (await sender.post(b"{}", {})).status == 201
    assert raw.connections == 1
    await sender.aclose()


async def test_answers_written_a_byte_at_a_time(serve: Serve) -> None:
    answers = [
        b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\n{}",
        b"HTTP/1.1 429 Slow\r\nTransfer-Encoding: chunked\r\nRetry-After: 1\r\n\r\n"
        b"2\r\nno\r\n0\r\n\r\n",
    ]

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for answer in answers:
            await read_request(reader)
            for i in range(len(answer)):
                writer.write(answer[i : i + 1])
                await writer.drain()

    raw, url = await serve(handler)
    sender = DirectSender(url, timeout=5)
    first = await sender.post(b"{}", {})
    second = await sender.post(b"{}", {})
    assert (first.status, first.body) == (201, b"{}")
    assert (second.status, second.body, second.headers["retry-after"]) == (429, b"no", "1")
    assert raw.connections == 1
    await sender.aclose()


async def test_connection_close_and_eof_delimited_answers(serve: Serve) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.0 500 Oops\r\n\r\nbody until close")
        await writer.drain()

    raw, url = await serve(handler)
    sender = DirectSender(url, timeout=5)
    for _ in range(2):
        reply = await sender.post(b"{}", {})
        assert (reply.status, reply.body) == (500, b"body until close")
    assert raw.connections == 2
    await sender.aclose()


async def test_stale_kept_alive_connection_is_replaced(serve: Serve) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        # ...then closes, although the answer allowed keep-alive.

    raw, url = await serve(handler)
    sender = DirectSender(url, timeout=5)
    assert (await sender.post(b"{}", {})).status == 201
    assert (await sender.post(b"{}", {})).status == 201
    assert raw.connections == 2
    await sender.aclose()


@pytest.mark.parametrize(
    "answer",
    [
        b"garbage\r\n\r\n",
        b"HTTP/1.1 2x1 Bad\r\n\r\n",
        b"HTTP/1.1 201 OK\r\nContent-Length: x\r\n\r\n",
        b"HTTP/1.1 201 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"HTTP/1.1 201 OK\r\nContent-Length: 10\r\n\r\nshort",
    ],
)
async def test_malformed_answers_are_send_errors(serve: Serve, answer: bytes) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(answer)
        await writer.drain()
        writer.close()

    _, url = await serve(handler)
    sender = DirectSender(url, timeout=5)
    with pytest.raises(SendError):
        await sender.post(b"{}", {})
    await sender.aclose()


async def test_timeout_is_a_send_error_marked_timed_out(serve: Serve) -> None:
    release = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        await release.wait()

    _, url = await serve(handler)
    sender = DirectSender(url, timeout=0.2)
    with pytest.raises(SendError) as raised:
        await sender.post(b"{}", {})
    assert raised.value.timed_out
    release.set()
    await sender.aclose()


async def test_refused_connection_is_a_send_error() -> None:
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()
    sender = DirectSender(f"http://127.0.0.1:{port}/meter/v2/ai/completions", timeout=2)
    with pytest.raises(SendError) as raised:
        await sender.post(b"{}", {})
    assert not raised.value.timed_out
    assert "ConnectionRefused" in str(raised.value) or "Errno" in str(raised.value)


def test_environment_proxies_choose_httpx(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "NO_PROXY",
        "http_proxy",
        "https_proxy",
        "all_proxy",
        "no_proxy",
    ):
        monkeypatch.delenv(name, raising=False)
    url = "https://api.revenium.ai/meter/v2/ai/completions"
    assert proxy_for(url) is None
    assert isinstance(sender_for(url, 5, 4), DirectSender)
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.internal:3128")
    assert proxy_for(url) == "http://proxy.internal:3128"
    assert isinstance(sender_for(url, 5, 4), ProxiedSender)
    monkeypatch.setenv("NO_PROXY", "api.revenium.ai")
    assert proxy_for(url) is None
