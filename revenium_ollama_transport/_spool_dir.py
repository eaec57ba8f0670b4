"""Where the spool lives, and whether it holds records: all that is needed at import.

Kept apart from ``_spool`` so that importing the package (which looks for records left by
an earlier process) does not load the spool itself, nor the delivery layer behind it.
"""

from __future__ import annotations

import os
from pathlib import Path

from ._paths import user_dir

SUFFIX = ".jsonl"  # a spool file waiting for delivery (claimed ones carry a suffix after it)


def default_dir() -> Path:
    """The user's cache directory / revenium-ollama-transport / spool."""
    return user_dir("cache") / "spool"


def directory_for(setting: str | None) -> Path | None:
    """The directory REVENIUM_SPOOL_DIR names: unset or empty -> ``default_dir()``, "off"
    -> None (no spool)."""
    setting = (setting or "").strip()
    if setting.lower() == "off":
        return None
    return Path(os.path.expanduser(setting)) if setting else default_dir()


def has_waiting(setting: str | None) -> bool:
    """Whether the spool ``setting`` names holds records (one directory listing, no side
    effect): a process that starts with some delivers them even if it makes no metered
    call of its own."""
    directory = directory_for(setting)
    if directory is None:
        return False
    try:
        return any(SUFFIX in name for name in os.listdir(directory))
    except OSError:
        return False
