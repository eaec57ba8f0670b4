"""`make demo`: a metered Ollama call end to end, on any machine.

Uses the Ollama at OLLAMA_HOST if one answers, else the package's simulator; sends records
to Revenium if REVENIUM_METERING_API_KEY is set, else to a fake metering API started here;
then prints the records that were delivered.
"""

from __future__ import annotations

import contextlib
import os
import runpy
import sys
from pathlib import Path

import httpx
import orjson

import revenium_ollama_transport as metering
from revenium_ollama_transport._delivery import dispatcher
from revenium_ollama_transport._record import MeteringRecord
from revenium_ollama_transport.testing import FakeMeteringAPI, OllamaSimulator, SimulatedReply

HERE = Path(__file__).parent


def ollama_answers(host: str) -> bool:
    url = host if "://" in host else f"http://{host}"
    try:
        return httpx.get(f"{url.rstrip('/')}/api/version", timeout=1.0).status_code == 200
    except httpx.HTTPError:
        return False


def main() -> int:
    host = os.environ.get("OLLAMA_HOST", "http://127.0.0.1:11434")
    with contextlib.ExitStack() as stack:
        if ollama_answers(host):
            print(f"Ollama: the real one at {host}")
        else:
            simulator = stack.enter_context(OllamaSimulator())
            simulator.reply = SimulatedReply(
                tokens=["I", " am", " ready", " to", " help", "."], prompt_eval_count=18
            )
            os.environ["OLLAMA_HOST"] = simulator.url
            print(
                f"Ollama: none answered at {host}; using the bundled simulator at {simulator.url}"
            )

        fake_api: FakeMeteringAPI | None = None
        if os.environ.get("REVENIUM_METERING_API_KEY"):
            print("Metering: Revenium, with REVENIUM_METERING_API_KEY from the environment")
        else:
            fake_api = stack.enter_context(FakeMeteringAPI())
            metering.configure(api_key="hak_demo", base_url=fake_api.url)
            print(f"Metering: no REVENIUM_METERING_API_KEY; using a fake API at {fake_api.url}")

        sent: list[MeteringRecord] = []
        dispatcher.add_listener(sent.append)
        print("\n--- examples/getting_started.py ---")
        try:
            runpy.run_path(str(HERE / "getting_started.py"), run_name="__main__")
        except SystemExit as exit_:
            if exit_.code:
                return int(exit_.code)
        metering.flush(10.0)

        records = fake_api.records if fake_api is not None else [r.wire for r in sent]
        print(f"\n--- {len(records)} metering record(s) delivered ---")
        for record in records:
            print(orjson.dumps(record, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS).decode())
        stats = metering.stats()
        print(f"\nstats: {stats}")
        return 0 if stats.get("delivered", 0) >= 1 else 1


if __name__ == "__main__":
    sys.exit(main())
