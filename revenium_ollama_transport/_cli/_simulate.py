"""``simulate``: the package's Ollama simulator as a local server, until SIGINT / SIGTERM."""

from __future__ import annotations

import re
import time
from typing import TextIO

from revenium_ollama_transport.testing import OllamaSimulator, SimulatedReply

_PIECES = re.compile(r"\s*\S+")


def pieces(text: str) -> tuple[str, ...]:
    """``text`` as streamed tokens: each word with the spaces before it."""
    return tuple(_PIECES.findall(text))


def reply(
    text: str | None,
    prompt_eval_count: int | None,
    eval_count: int | None,
    chunk_delay: float,
    model: str | None,
) -> SimulatedReply:
    """The simulator's answer; what is not given keeps ``SimulatedReply``'s default."""
    default = SimulatedReply()
    return SimulatedReply(
        model=model,
        tokens=default.tokens if text is None else pieces(text),
        prompt_eval_count=default.prompt_eval_count
        if prompt_eval_count is None
        else prompt_eval_count,
        eval_count=eval_count,
        chunk_delay=chunk_delay,
    )


def serve(host: str, port: int, answer: SimulatedReply, out: TextIO) -> None:
    """Serves until interrupted (the caller's signal handling ends the wait); prints the
    URL it bound and how to point Ollama clients at it. ``OSError`` when it cannot bind."""
    with OllamaSimulator(answer, address=(host, port)) as simulator:
        out.write(f"Ollama simulator listening on {simulator.url}\n")
        out.write(f"point clients at it: OLLAMA_HOST={simulator.url}\n")
        out.flush()
        while True:
            time.sleep(3600)
