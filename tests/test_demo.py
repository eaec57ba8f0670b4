"""`make demo`: the getting-started example end to end, on the simulator and the fake API."""

from __future__ import annotations

import re
from pathlib import Path

from revenium_ollama_transport.testing import OllamaSimulator

from ._processes import run_python

DEMO = Path(__file__).parent.parent / "examples" / "demo.py"


def test_demo_meters_the_getting_started_call() -> None:
    with OllamaSimulator() as gone:  # a port where nothing answers
        nowhere = gone.url
    done = run_python(DEMO, {"OLLAMA_HOST": nowhere})
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert "using the bundled simulator" in out
    assert "using a fake API" in out
    assert "1 metering record(s) delivered" in out
    printed = re.search(r"transaction id: (\S+)", out)
    assert printed is not None
    assert f'"transactionId": "{printed.group(1)}"' in out
    assert "'delivered': 1" in out
