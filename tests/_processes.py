"""Fresh interpreters for tests of import, exit and examples: run with a clean environment."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path


def run_python(
    script: Path,
    env: Mapping[str, str],
    *args: str,
    cwd: Path | None = None,
    timeout: float = 60,
) -> subprocess.CompletedProcess[str]:
    """Runs ``script`` (with ``args``) with none of the caller's REVENIUM_, OLLAMA_ or OPENAI_
    variables, plus ``env``; returns the finished process (its status is the caller's to
    check)."""
    environment = {
        k: v for k, v in os.environ.items() if not k.startswith(("REVENIUM_", "OLLAMA_", "OPENAI_"))
    }
    # No test leaves records in the user's own spool unless it names one.
    environment.setdefault("REVENIUM_SPOOL_DIR", "off")
    environment.setdefault("REVENIUM_LEDGER", "off")
    environment.update(env)
    return subprocess.run(
        [sys.executable, str(script), *args],
        cwd=cwd,
        env=environment,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
