"""The openai SDK pointed at Ollama: metered clients, and ``usage_metadata=`` on its calls.

Every ``OpenAI`` / ``AsyncOpenAI`` client (the module-level one included) whose base URL
is not a hosted API (OpenAI's, Azure's) gets its HTTP client instrumented when it is made;
``chat.completions.create``, ``completions.create``, ``embeddings.create`` and
``responses.create`` take ``usage_metadata=``. For a client whose calls do not go through
a metering transport, ``usage_metadata`` is taken out and dropped with one warning, so
that it is never sent to a third party.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any

from ._metadata import as_layer, check
from ._tagging import call_tagged, call_tagged_async
from ._transport import AsyncReveniumTransport, ReveniumTransport

logger = logging.getLogger("revenium_ollama_transport")

# Hosts of hosted APIs the openai SDK also talks to: calls there are not Ollama's.
_HOSTED = ("openai.com", "azure.com")
# (module, class names) of the resources whose create() takes usage_metadata=.
_RESOURCES = (
    ("openai.resources.chat.completions", ("Completions", "AsyncCompletions")),
    ("openai.resources.completions", ("Completions", "AsyncCompletions")),
    ("openai.resources.embeddings", ("Embeddings", "AsyncEmbeddings")),
    ("openai.resources.responses", ("Responses", "AsyncResponses")),
)
_warned: set[str] = set()

Patch = Callable[[Any, str, Any], None]
Instrument = Callable[[Any], Any]


def meters(base_url: object) -> bool:
    """Whether a client with this base URL talks to Ollama (anything but a hosted API)."""
    host = str(getattr(base_url, "host", "") or "").lower()
    return not any(host == name or host.endswith("." + name) for name in _HOSTED)


def _metered(http: Any) -> bool:
    transports = [getattr(http, "_transport", None), *getattr(http, "_mounts", {}).values()]
    return any(isinstance(t, (ReveniumTransport, AsyncReveniumTransport)) for t in transports)


def _take_metadata(resource: Any, usage_metadata: object) -> Any:
    """The layer to meter the call with, or None (warned) when its client is not metered."""
    layer = as_layer(usage_metadata)
    if not layer:
        return None
    check(layer)
    client = getattr(resource, "_client", None)
    if _metered(getattr(client, "_client", None)):
        return layer
    name = type(client).__name__
    if name not in _warned:
        _warned.add(name)
        logger.warning(
            "usage_metadata dropped: this %s does not send its calls through "
            "revenium_ollama_transport (its base URL is a hosted API, or its http client "
            "was replaced); use revenium_ollama_transport.instrument() on it to meter it",
            name,
        )
    return None


def _sync_create(original: Callable[..., Any]) -> Callable[..., Any]:
    # The SDK sends the request, and its own retries, within create(); what it returns (for
    # a stream, the Stream) carries the last attempt's transaction id.
    @functools.wraps(original)
    def create(self: Any, *args: Any, usage_metadata: Any = None, **kwargs: Any) -> Any:
        layer = None if usage_metadata is None else _take_metadata(self, usage_metadata)
        return call_tagged(lambda: original(self, *args, **kwargs), layer)

    return create


def _async_create(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    async def create(self: Any, *args: Any, usage_metadata: Any = None, **kwargs: Any) -> Any:
        layer = None if usage_metadata is None else _take_metadata(self, usage_metadata)
        return await call_tagged_async(lambda: original(self, *args, **kwargs), layer)

    return create


def _metered_init(original: Callable[..., None], instrument: Instrument) -> Callable[..., None]:
    @functools.wraps(original)
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        try:
            if meters(self.base_url):
                instrument(self._client)
        except Exception:
            logger.debug("could not instrument an openai client", exc_info=True)

    return __init__


def install_openai(patch: Patch, instrument: Instrument) -> None:
    """Patches the openai SDK (already imported) through ``patch(owner, name, value)``."""
    import importlib  # noqa: PLC0415

    base = importlib.import_module("openai._base_client")
    for cls in (base.SyncAPIClient, base.AsyncAPIClient):
        patch(cls, "__init__", _metered_init(cls.__dict__["__init__"], instrument))
    for module_name, class_names in _RESOURCES:
        module = importlib.import_module(module_name)
        for class_name in class_names:
            cls = getattr(module, class_name, None)
            if cls is None or "create" not in cls.__dict__:
                continue
            wrap = _async_create if class_name.startswith("Async") else _sync_create
            patch(cls, "create", wrap(cls.__dict__["create"]))
