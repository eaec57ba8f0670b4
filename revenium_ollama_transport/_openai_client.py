"""Metered openai SDK clients for Ollama's OpenAI-compatible API, in one call."""

from __future__ import annotations

import os
import sys
from typing import Any

from ._install import instrument
from ._transport import AsyncReveniumTransport, ReveniumTransport


def _default_base_url() -> str:
    host = os.environ.get("OLLAMA_HOST", "").strip() or "http://127.0.0.1:11434"
    if "://" not in host:
        host = f"http://{host}"
    return host.rstrip("/") + "/v1/"


def _http_client(asynchronous: bool) -> Any:
    # openai 3.x runs on httpx2 (and imports it); 1.x and 2.x on httpx.
    if "httpx2" in sys.modules:
        import httpx2 as family  # noqa: PLC0415
    else:
        import httpx as family  # type: ignore[no-redef]  # noqa: PLC0415
    if asynchronous:
        return family.AsyncClient(transport=AsyncReveniumTransport())
    return family.Client(transport=ReveniumTransport())


def openai_client(base_url: str | None = None, **kwargs: Any) -> Any:
    """An ``openai.OpenAI`` for Ollama (``OLLAMA_HOST``'s ``/v1/`` unless ``base_url``
    says otherwise; ``api_key`` "ollama" unless given) whose calls are metered. Other
    keyword arguments go to ``OpenAI``; a given ``http_client`` is instrumented in place."""
    import openai  # noqa: PLC0415 - an optional dependency

    kwargs.setdefault("api_key", "ollama")
    http = kwargs.pop("http_client", None)
    http = instrument(http) if http is not None else _http_client(asynchronous=False)
    return openai.OpenAI(base_url=base_url or _default_base_url(), http_client=http, **kwargs)


def async_openai_client(base_url: str | None = None, **kwargs: Any) -> Any:
    """The ``openai.AsyncOpenAI`` counterpart of ``openai_client``."""
    import openai  # noqa: PLC0415

    kwargs.setdefault("api_key", "ollama")
    http = kwargs.pop("http_client", None)
    http = instrument(http) if http is not None else _http_client(asynchronous=True)
    return openai.AsyncOpenAI(base_url=base_url or _default_base_url(), http_client=http, **kwargs)
