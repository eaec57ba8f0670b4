"""Where the spool lives, and whether it holds records: all that is needed at import.

Kept apart from ``_spool`` so that importing the package (which looks for records left by
an earlier process) does not load the spool itself, nor the delivery layer behind it.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

APP_DIR = "revenium-ollama-transport"
SUFFIX = ".jsonl"  # a spool file waiting for delivery (claimed ones carry a suffix after it)


def default_dir() -> Path:
    """The user's cache directory / revenium-ollama-transport / spool."""
    if os.name == "nt":
        base = os.environ.get("LOCALAPPDATA") or str(Path.home() / "AppData" / "Local")
    elif sys.platform == "darwin":
        base = str(Path.home() / "Library" / "Caches")
    else:
        xdg = os.environ.get("XDG_CACHE_HOME", "")
        # The XDG spec: a relative path is invalid and is to be ignored.
        base = xdg if os.path.isabs(xdg) else str(Path.home() / ".cache")
    return Path(base) / APP_DIR / "spool"


def has_waiting(setting: str | None) -> bool:
    """Whether the spool ``setting`` names holds records (one directory listing, no side
    effect): a process that starts with some delivers them even if it makes no metered
    call of its own."""
    setting = (setting or "").strip()
    if setting.lower() == "off":
        return False
    directory = Path(os.path.expanduser(setting)) if setting else default_dir()
    try:
        return any(SUFFIX in name for name in os.listdir(directory))
    except OSError:
        return False
