"""Fresh interpreters for tests of import, exit and examples: run with a clean environment."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path


def clean_environment(env: Mapping[str, str]) -> dict[str, str]:
    """The caller's environment with none of its REVENIUM_, OLLAMA_ or OPENAI_ variables,
    plus ``env``."""
    environment = {
        k: v for k, v in os.environ.items() if not k.startswith(("REVENIUM_", "OLLAMA_", "OPENAI_"))
    }
    # No test leaves records in the user's own spool or ledger unless it names one.
    environment.setdefault("REVENIUM_SPOOL_DIR", "off")
    environment.setdefault("REVENIUM_LEDGER", "off")
    environment.update(env)
    return environment


def run_python(
    script: Path,
    env: Mapping[str, str],
    *args: str,
    cwd: Path | None = None,
    timeout: float = 60,
) -> subprocess.CompletedProcess[str]:
    """Runs ``script`` (with ``args``) in ``clean_environment(env)``; returns the finished
    process (its status is the caller's to check)."""
    return subprocess.run(
        [sys.executable, str(script), *args],
        cwd=cwd,
        env=clean_environment(env),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def start_python(
    script: Path, env: Mapping[str, str], *args: str, stdout: Path, stderr: Path
) -> subprocess.Popen[bytes]:
    """Starts ``script`` as ``run_python`` runs it, without waiting for it. Its stdin is a
    pipe; its output goes to files, so that however much it writes it never blocks on a
    full pipe."""
    with stdout.open("wb") as out, stderr.open("wb") as err:
        return subprocess.Popen(
            [sys.executable, str(script), *args],
            env=clean_environment(env),
            stdin=subprocess.PIPE,
            stdout=out,
            stderr=err,
        )
