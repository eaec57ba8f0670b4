"""The package logger: silent unless ``REVENIUM_LOG_LEVEL`` is set, and never shows secrets."""

from __future__ import annotations

import logging
import os
import threading

logger = logging.getLogger("revenium_ollama_transport")

_MASK = "***"


class SecretFilter(logging.Filter):
    """Masks registered secret values in every record logged through our logger."""

    def __init__(self) -> None:
        super().__init__("revenium_ollama_transport")
        self._secrets: frozenset[str] = frozenset()
        self._lock = threading.Lock()

    def register(self, secret: str | None) -> None:
        if secret and len(secret) >= 4:
            with self._lock:
                self._secrets = self._secrets | {secret}

    def filter(self, record: logging.LogRecord) -> bool:
        secrets = self._secrets
        if not secrets:
            return True
        message = record.getMessage()
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        masked = message
        text = record.exc_text or ""
        for secret in secrets:
            masked = masked.replace(secret, _MASK)
            text = text.replace(secret, _MASK)
        if masked is not message:
            record.msg, record.args = masked, None
        if record.exc_text:
            record.exc_text = text
        return True


secret_filter = SecretFilter()
logger.addFilter(secret_filter)


def configure_from_environment() -> None:
    """Attaches a stderr handler at ``REVENIUM_LOG_LEVEL`` when the variable is set."""
    raw = os.environ.get("REVENIUM_LOG_LEVEL", "").strip().upper()
    if not raw:
        return
    level = logging.getLevelName(raw)
    if not isinstance(level, int):
        level = logging.INFO
        logger.warning("REVENIUM_LOG_LEVEL=%r is not a level name; using INFO", raw)
    logger.setLevel(level)
    if not any(getattr(h, "_revenium", False) for h in logger.handlers):
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        handler._revenium = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
