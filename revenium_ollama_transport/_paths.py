"""Where the package keeps files of the user's: the platform's cache and data directories."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Literal

APP_DIR = "revenium-ollama-transport"

# Per platform: (Windows, macOS, the XDG variable and its fallback under the home directory).
_KINDS = {
    "cache": ("Caches", "XDG_CACHE_HOME", (".cache",)),
    "data": ("Application Support", "XDG_DATA_HOME", (".local", "share")),
}


def user_dir(kind: Literal["cache", "data"]) -> Path:
    """The user's cache or data directory, with this package's folder in it."""
    mac_folder, xdg_variable, fallback = _KINDS[kind]
    if os.name == "nt":
        base = os.environ.get("LOCALAPPDATA") or str(Path.home() / "AppData" / "Local")
    elif sys.platform == "darwin":
        base = str(Path.home() / "Library" / mac_folder)
    else:
        xdg = os.environ.get(xdg_variable, "")
        # The XDG spec: a relative path is invalid and is to be ignored.
        base = xdg if os.path.isabs(xdg) else str(Path.home().joinpath(*fallback))
    return Path(base) / APP_DIR
