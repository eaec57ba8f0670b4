"""`make demo`: metered Ollama calls end to end, on any machine, with no account.

Uses the Ollama at OLLAMA_HOST if one answers, else the package's simulator. Runs the
getting-started, streaming and metadata examples, each in a fresh interpreter, into a fresh
local ledger (.demo/ledger.sqlite3, or under --dir), then prints `revenium-ollama report`
grouped by model and organization. With REVENIUM_METERING_API_KEY set the records also go
to Revenium.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
from pathlib import Path

import httpx

from revenium_ollama_transport.testing import OllamaSimulator, SimulatedReply

HERE = Path(__file__).parent
EXAMPLES = ("getting_started.py", "example_streaming.py", "example_metadata.py")

# What the simulator answers: a short reply with timings like a small local model's.
REPLY = SimulatedReply(
    tokens=["I", " am", " ready", " to", " help", "."],
    prompt_eval_count=18,
    total_duration=180_000_000,
    load_duration=15_000_000,
    prompt_eval_duration=9_000_000,
    eval_duration=150_000_000,
)


def ollama_answers(host: str) -> bool:
    url = host if "://" in host else f"http://{host}"
    try:
        return httpx.get(f"{url.rstrip('/')}/api/version", timeout=1.0).status_code == 200
    except httpx.HTTPError:
        return False


def fresh_ledger(directory: Path) -> Path:
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    ledger = directory / "ledger.sqlite3"
    for suffix in ("", "-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            Path(f"{ledger}{suffix}").unlink()
    return ledger


def run(title: str, command: list[str], env: dict[str, str]) -> int:
    print(f"\n--- {title} ---", flush=True)
    return subprocess.run(command, env=env, check=False).returncode


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--dir", type=Path, default=HERE.parent / ".demo", help="where the demo keeps its files"
    )
    directory: Path = parser.parse_args().dir
    env = dict(os.environ)
    host = env.get("OLLAMA_HOST", "http://127.0.0.1:11434")
    with contextlib.ExitStack() as stack:
        if ollama_answers(host):
            print(f"Ollama: the real one at {host}")
        else:
            simulator = stack.enter_context(OllamaSimulator())
            simulator.reply = REPLY
            env["OLLAMA_HOST"] = simulator.url
            print(
                f"Ollama: none answered at {host}; using the bundled simulator at {simulator.url}"
            )
        if env.get("REVENIUM_METERING_API_KEY"):
            print("Metering: to Revenium (REVENIUM_METERING_API_KEY), and to the local ledger")
        else:
            print("Metering: no REVENIUM_METERING_API_KEY, so to the local ledger only")
        ledger = fresh_ledger(directory)
        env |= {"REVENIUM_LEDGER": "on", "REVENIUM_LEDGER_PATH": str(ledger)}
        # The demo's own spool: what it leaves undelivered stays apart from the user's.
        env.setdefault("REVENIUM_SPOOL_DIR", str(directory / "spool"))
        print(f"Ledger: {ledger} (fresh)")

        failed = [
            name
            for name in EXAMPLES
            if run(f"examples/{name}", [sys.executable, str(HERE / name)], env) != 0
        ]
        command = [sys.executable, "-m", "revenium_ollama_transport"]
        status = run(
            "revenium-ollama report --by model,organization",
            [*command, "report", "--ledger", str(ledger), "--by", "model,organization"],
            env,
        )
    print(
        f"\nMore: revenium-ollama report --ledger {ledger} --by day\n"
        f"      revenium-ollama tail --ledger {ledger}\n"
        f"      revenium-ollama export --ledger {ledger} --format csv\n"
        f"      revenium-ollama report --ledger {ledger} --prices examples/prices.toml "
        "--reference gpt-4o-mini"
    )
    if failed:
        print(f"\nexamples that failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed or status else 0


if __name__ == "__main__":
    sys.exit(main())
