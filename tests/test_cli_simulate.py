"""``revenium-ollama simulate``: the Ollama simulator as a server of its own, answered by a
real ``ollama.Client``, ended by a signal."""

from __future__ import annotations

import re
import signal
from typing import Any

import ollama
import pytest

from revenium_ollama_transport.testing import OllamaSimulator

from ._cli import Running, cli

pytestmark = pytest.mark.timeout(60)


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT])
def test_simulate_serves_ollama_until_a_signal(stop: signal.Signals) -> None:
    server = Running(
        "simulate",
        "--port",
        "0",
        "--reply",
        "Hello there, world",
        "--prompt-eval-count",
        "7",
        "--model",
        "sim:1b",
    )
    try:
        listening = re.fullmatch(
            r"Ollama simulator listening on (http://127\.0\.0\.1:\d+)", server.line()
        )
        assert listening is not None
        url = listening.group(1)
        assert server.line() == f"point clients at it: OLLAMA_HOST={url}"

        client: Any = ollama.Client(host=url)
        answer = client.chat(model="llama3.2", messages=[{"role": "user", "content": "hi"}])
        assert answer.message.content == "Hello there, world"
        assert (answer.model, answer.prompt_eval_count, answer.eval_count) == ("sim:1b", 7, 3)
        pieces = [c.response for c in client.generate(model="x", prompt="p", stream=True)]
        assert pieces == ["Hello", " there,", " world", ""]

        server.process.send_signal(stop)
        assert server.wait() == 0
        assert server.errors() == ""
    finally:
        server.stop()


def test_a_port_in_use_is_one_error_line() -> None:
    with OllamaSimulator() as taken:
        port = taken.port
        done = cli("simulate", "--port", str(port))
    assert done.returncode == 1
    assert done.stderr.startswith(
        f"revenium-ollama simulate: error: cannot listen on 127.0.0.1:{port}"
    )
    assert len(done.stderr.splitlines()) == 1
