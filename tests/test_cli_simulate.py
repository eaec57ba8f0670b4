"""``revenium-ollama simulate``: the Ollama simulator as a server of its own, answered by a
real ``ollama.Client``, ended by a signal."""

from __future__ import annotations

import json
import re
import signal
import textwrap
from decimal import ROUND_HALF_EVEN, Decimal
from pathlib import Path
from typing import Any

import ollama
import pytest

from revenium_ollama_transport.testing import OllamaSimulator

from ._cli import Running, cli
from ._processes import run_python

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


APP = """
import ollama
import revenium_ollama_transport

ollama.chat(model="llama3.2", messages=[{"role": "user", "content": "hi"}])
for _ in ollama.generate(model="llama3.2", prompt="hi", stream=True):
    pass
assert revenium_ollama_transport.flush(10)
"""


def test_simulate_an_app_without_a_key_and_report_what_it_used(tmp_path: Path) -> None:
    """The whole local loop: an app pointed at the simulator, with no API key, records its
    calls in the ledger (the default), and report reads them back."""
    server = Running(
        "simulate", "--port", "0", "--reply", "One two three", "--prompt-eval-count", "11"
    )
    try:
        url = server.line().rpartition(" ")[2]
        app = tmp_path / "app.py"
        app.write_text(textwrap.dedent(APP))
        ledger = str(tmp_path / "data" / "ledger.sqlite3")
        env = {"OLLAMA_HOST": url, "REVENIUM_LEDGER": "", "REVENIUM_LEDGER_PATH": ledger}
        ran = run_python(app, env)
        assert ran.returncode == 0, ran.stderr
    finally:
        server.process.send_signal(signal.SIGTERM)
        assert server.wait() == 0
        server.stop()
    done = cli("report", "--format", "json", "--by", "model", env={"REVENIUM_LEDGER_PATH": ledger})
    assert done.returncode == 0, done.stderr
    (group,) = json.loads(done.stdout)["groups"]
    assert (group["model"], group["calls"], group["errors"]) == ("llama3.2", 2, 0)
    assert (group["input_tokens"], group["output_tokens"]) == (22, 6)
    # SimulatedReply's default timings: 45_678_901 ns of prompt eval, 234_567_890 of eval.
    prefill = Decimal(22 * 10**9) / Decimal(2 * 45_678_901)
    generation = Decimal(6 * 10**9) / Decimal(2 * 234_567_890)
    tenth = Decimal("0.1")
    assert group["prefill_tokens_per_s"] == float(prefill.quantize(tenth, ROUND_HALF_EVEN))
    assert group["generation_tokens_per_s"] == float(generation.quantize(tenth, ROUND_HALF_EVEN))
