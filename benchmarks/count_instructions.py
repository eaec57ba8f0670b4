"""Instructions and allocations per call and per delivered record, counted by callgrind:
steadier than times on a shared machine, and what a change to the hot paths is judged by.

Each figure is (count with N2) - (count with N1), over N2 - N1, so that start-up and imports
cancel out (every mode runs once first, uncounted, so that no counted run compiles a
module); ``PYTHONHASHSEED=0`` keeps dictionaries laid out alike run to run. Allocations are
callgrind's counts of calls to two functions of CPython: ``_PyObject_Malloc`` (every block
of its small-object allocator, objects and their buffers alike) and ``_PyObject_GC_Link``
(every object allocated that the garbage collector tracks, but those reused from a free
list); a build without these names shows none.

- call: a small ``Client.chat`` over an in-process mock of Ollama, as plain ollama, through
  the explicit transport and through the installed path; records are discarded as they are
  made, so this is the caller's path alone.
- delivery: the delivery thread's counts per record (callgrind's per-thread counts), for
  records of such calls handed over all at once and delivered to the fake metering API in
  another process (not counted).

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
from typing import NamedTuple

WORKER = Path(__file__).with_name("_instructions_worker.py")


# The CPython functions whose calls are counted: small-object blocks, tracked objects.
ALLOCATORS = ("_PyObject_Malloc", "_PyObject_GC_Link")
_NAMED = re.compile(r"c?fn=\((\d+)\)(?: (.*))?")


class Counts(NamedTuple):
    instructions: float
    blocks: float  # calls to _PyObject_Malloc
    tracked: float  # calls to _PyObject_GC_Link


def allocator_calls(text: str) -> dict[str, int]:
    """Calls to each of ``ALLOCATORS`` in a callgrind output file's text. Function names
    are compressed there: ``fn=(7) name`` the first time, ``fn=(7)`` after; a call is a
    ``cfn=`` line (the callee), then a ``calls=N ...`` line."""
    names: dict[str, str] = {}
    calls = dict.fromkeys(ALLOCATORS, 0)
    callee: str | None = None
    for line in text.splitlines():
        if line.startswith(("fn=", "cfn=")):
            match = _NAMED.match(line)
            if match is not None:
                number, name = match.groups()
                if name:
                    names[number] = name
                callee = names.get(number) if line.startswith("c") else None
        elif callee is not None and line.startswith("calls="):
            if callee in calls:
                calls[callee] += int(line[6:].split()[0])
            callee = None
    return calls


def counted(mode: str, n: int, scratch: Path) -> Counts:
    """What the worker in ``mode`` making ``n`` calls ran: the whole process for the call
    modes, the delivery thread alone for "delivery"."""
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
    output = scratch / f"{mode}.{n}-02" if mode == "delivery" else out
    text = output.read_text(errors="replace")
    match = re.search(r"^summary: (\d+)", text, re.MULTILINE)
    if match is None:
        raise RuntimeError(f"no summary in {output}")
    calls = allocator_calls(text)
    return Counts(int(match.group(1)), *(calls[name] for name in ALLOCATORS))


def per_unit(mode: str, counts: tuple[int, int], scratch: Path) -> Counts:
    low, high = counts
    fewer, more = counted(mode, low, scratch), counted(mode, high, scratch)
    return Counts(*((m - f) / (high - low) for f, m in zip(fewer, more, strict=True)))


def row(label: str, counts: Counts) -> str:
    return (
        f"  {label:<22} {counts.instructions:>11,.0f} {counts.blocks:>6.0f} {counts.tracked:>5.0f}"
    )


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
        f"per small chat call (callgrind, {args.calls[0]} and {args.calls[1]} calls): "
        "instructions, small-object allocations, tracked objects allocated"
    )
    print(row("plain ollama", plain))
    for mode, label in (("transport", "explicit transport"), ("installed", "installed")):
        mine = calls[mode]
        added = Counts(*(m - p for m, p in zip(mine, plain, strict=True)))
        print(
            f"{row(label, mine)}  +{added.instructions:,.0f} "
            f"({added.instructions / plain.instructions:.1%}), {added.blocks:+.0f}, "
            f"{added.tracked:+.0f}"
        )
    print(
        f"per record, the delivery thread ({args.records[0]} and {args.records[1]} records): "
        f"{delivery.instructions:,.0f} instructions, {delivery.blocks:.0f} small-object "
        f"allocations, {delivery.tracked:.0f} tracked objects allocated"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
