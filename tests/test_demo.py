"""`make demo`: the getting-started example end to end, on the simulator and the fake API."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from revenium_ollama_transport.testing import OllamaSimulator

DEMO = Path(__file__).parent.parent / "examples" / "demo.py"


def test_demo_meters_the_getting_started_call() -> None:
    with OllamaSimulator() as gone:  # a port where nothing answers
        nowhere = gone.url
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REVENIUM_", "OLLAMA_"))}
    env["OLLAMA_HOST"] = nowhere
    done = subprocess.run(
        [sys.executable, str(DEMO)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert "using the bundled simulator" in out
    assert "using a fake API" in out
    assert "1 metering record(s) delivered" in out
    printed = re.search(r"transaction id: (\S+)", out)
    assert printed is not None
    assert f'"transactionId": "{printed.group(1)}"' in out
    assert "'delivered': 1" in out
