"""Instructions per call and per delivered record, counted by callgrind: steadier than
times on a shared machine, and what a change to the hot paths is judged by.

Each figure is (instructions with N2) - (instructions with N1), over N2 - N1, so that start-up
and imports cancel out (every mode runs once first, uncounted, so that no counted run
compiles a module); ``PYTHONHASHSEED=0`` keeps dictionaries laid out alike run to run.

- call: a small ``Client.chat`` over an in-process mock of Ollama, as plain ollama, through
  the explicit transport and through the installed path; records are discarded as they are
  made, so this is the caller's path alone.
- delivery: the delivery thread's instructions per record (callgrind's per-thread counts),
  for records of such calls handed over all at once and delivered to the fake metering API
  in another process (not counted).

Needs valgrind on the PATH. Takes a few minutes.

    python benchmarks/count_instructions.py [--calls N1,N2] [--records N1,N2]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

WORKER = Path(__file__).with_name("_instructions_worker.py")


def counted(mode: str, n: int, scratch: Path) -> int:
    """Instructions of the worker in ``mode`` making ``n`` calls: the whole process for the
    call modes, the delivery thread alone for "delivery"."""
    out = scratch / f"{mode}.{n}"
    environment = {**os.environ, "PYTHONHASHSEED": "0"}
    command = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}"]
    if mode == "delivery":
        command.append("--separate-threads=yes")
    done = subprocess.run(
        [*command, sys.executable, str(WORKER), mode, str(n)],
        capture_output=True,
        text=True,
        env=environment,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"{mode} {n}: exit {done.returncode}\n{done.stderr[-2000:]}")
    # The delivery thread is the first one the main thread starts: callgrind's "-02" file.
    summary_file = scratch / f"{mode}.{n}-02" if mode == "delivery" else out
    match = re.search(r"^summary: (\d+)", summary_file.read_text(), re.MULTILINE)
    if match is None:
        raise RuntimeError(f"no summary in {summary_file}")
    return int(match.group(1))


def per_unit(mode: str, counts: tuple[int, int], scratch: Path) -> float:
    low, high = counts
    return (counted(mode, high, scratch) - counted(mode, low, scratch)) / (high - low)


def pair(text: str) -> tuple[int, int]:
    low, _, high = text.partition(",")
    return int(low), int(high)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=pair, default=(200, 700), help="N1,N2 calls")
    parser.add_argument("--records", type=pair, default=(500, 2500), help="N1,N2 records")
    args = parser.parse_args()
    if shutil.which("valgrind") is None:
        print("valgrind is not on the PATH: nothing counted", file=sys.stderr)
        return 1
    # Each mode once, uncounted: a module compiled (its .pyc written) inside a counted run
    # would be counted in one of the pair only, and not cancel out.
    for mode in ("installed", "transport", "delivery"):
        subprocess.run([sys.executable, str(WORKER), mode, "1"], capture_output=True, check=True)
    with tempfile.TemporaryDirectory(prefix="bench-instructions-") as scratch:
        where = Path(scratch)
        calls = {
            mode: per_unit(mode, args.calls, where) for mode in ("plain", "transport", "installed")
        }
        delivery = per_unit("delivery", args.records, where)
    plain = calls["plain"]
    print(
        f"instructions per small chat call (callgrind, {args.calls[0]} and {args.calls[1]} calls):"
    )
    print(f"  {'plain ollama':<34} {plain:>11,.0f}")
    for mode, label in (("transport", "explicit transport"), ("installed", "installed")):
        added = calls[mode] - plain
        print(f"  {label:<34} {calls[mode]:>11,.0f}  +{added:,.0f} ({added / plain:.1%})")
    print(
        f"instructions of the delivery thread per record ({args.records[0]} and "
        f"{args.records[1]} records): {delivery:,.0f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
