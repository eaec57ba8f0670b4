"""`make demo`: a metered Ollama call end to end, on any machine.

Uses the Ollama at OLLAMA_HOST if one answers, else the package's simulator; sends records
to Revenium if REVENIUM_METERING_API_KEY is set, else to a fake metering API started here.
Runs examples/getting_started.py in a fresh interpreter pointed at them, then prints the
records that were delivered.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import orjson

from revenium_ollama_transport.testing import FakeMeteringAPI, OllamaSimulator, SimulatedReply

HERE = Path(__file__).parent
REPORT = "--- revenium demo report ---"

# Runs the example, then reports what its process delivered (for a real Revenium account,
# whose stored records this demo cannot read back).
CHILD = f"""
import runpy, sys, orjson
import revenium_ollama_transport as metering
from revenium_ollama_transport._delivery import dispatcher
sent = []
dispatcher.add_listener(lambda record: sent.append(record.wire))
try:
    runpy.run_path(sys.argv[1], run_name="__main__")
except SystemExit as exit_:
    if exit_.code:
        raise
metering.flush(10.0)
print({REPORT!r})
print(orjson.dumps({{"records": sent, "stats": metering.stats()}}).decode())
"""


def ollama_answers(host: str) -> bool:
    url = host if "://" in host else f"http://{host}"
    try:
        return httpx.get(f"{url.rstrip('/')}/api/version", timeout=1.0).status_code == 200
    except httpx.HTTPError:
        return False


def main() -> int:
    env = dict(os.environ)
    host = env.get("OLLAMA_HOST", "http://127.0.0.1:11434")
    with contextlib.ExitStack() as stack:
        if ollama_answers(host):
            print(f"Ollama: the real one at {host}")
        else:
            simulator = stack.enter_context(OllamaSimulator())
            simulator.reply = SimulatedReply(
                tokens=["I", " am", " ready", " to", " help", "."], prompt_eval_count=18
            )
            env["OLLAMA_HOST"] = simulator.url
            print(
                f"Ollama: none answered at {host}; using the bundled simulator at {simulator.url}"
            )

        fake_api: FakeMeteringAPI | None = None
        if env.get("REVENIUM_METERING_API_KEY"):
            print("Metering: Revenium, with REVENIUM_METERING_API_KEY from the environment")
        else:
            fake_api = stack.enter_context(FakeMeteringAPI())
            env["REVENIUM_METERING_API_KEY"] = "hak_demo"
            env["REVENIUM_METERING_BASE_URL"] = fake_api.url
            print(f"Metering: no REVENIUM_METERING_API_KEY; using a fake API at {fake_api.url}")

        print("\n--- examples/getting_started.py ---", flush=True)
        child = subprocess.run(
            [sys.executable, "-c", CHILD, str(HERE / "getting_started.py")],
            env=env,
            stdout=subprocess.PIPE,
            text=True,
            check=False,
        )
        output, _, report_text = child.stdout.partition(REPORT + "\n")
        print(output, end="")
        if child.returncode or not report_text:
            return child.returncode or 1
        report: dict[str, Any] = orjson.loads(report_text)
        records = fake_api.records if fake_api is not None else report["records"]
        print(f"\n--- {len(records)} metering record(s) delivered ---")
        for record in records:
            print(orjson.dumps(record, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS).decode())
        stats = report["stats"]
        print(f"\nstats: {stats}")
        return 0 if stats.get("delivered", 0) >= 1 else 1


if __name__ == "__main__":
    sys.exit(main())
