"""Where the package keeps files of the user's: the platform's cache and data directories."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Literal

APP_DIR = "revenium-ollama-transport"


def _xdg(variable: str, *fallback: str) -> str:
    value = os.environ.get(variable, "")
    # The XDG spec: a relative path is invalid and is to be ignored.
    return value if os.path.isabs(value) else str(Path.home().joinpath(*fallback))


def user_dir(kind: Literal["cache", "data"]) -> Path:
    """The user's cache or data directory, with this package's folder in it."""
    if os.name == "nt":
        base = os.environ.get("LOCALAPPDATA") or str(Path.home() / "AppData" / "Local")
    elif sys.platform == "darwin":
        base = str(
            Path.home() / "Library" / ("Caches" if kind == "cache" else "Application Support")
        )
    elif kind == "cache":
        base = _xdg("XDG_CACHE_HOME", ".cache")
    else:
        base = _xdg("XDG_DATA_HOME", ".local", "share")
    return Path(base) / APP_DIR
