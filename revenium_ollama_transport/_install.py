"""Metering with no code change: wiring into ``ollama`` (and ``openai``, and the SIGTERM /
SIGINT handlers that deliver before the process goes), undone exactly by ``uninstall``.

``install`` wraps the transport of every ``ollama.Client`` / ``AsyncClient`` made after
it (and of the client behind ``ollama.chat`` and friends) in place, so whatever the user
gave the client (``transport=``, ``verify``, ``limits``, environment proxies) keeps
working underneath. It also lets ``chat``, ``generate``, ``embed`` and ``embeddings``
take ``usage_metadata=`` and tags what they return with ``_revenium_transaction_id``.
"""

from __future__ import annotations

import functools
import sys
import threading
import weakref
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from typing import Any

from . import _config, _signals, _sink
from ._exact_wrap import exact_wrapper
from ._import_hook import AfterImport
from ._install_openai import install_openai
from ._metadata import as_layer, check
from ._observation import call_metadata, last_async_call, last_sync_call
from ._spool_dir import has_waiting
from ._stats import internal_failure
from ._tagging import (
    TRANSACTION_ATTRIBUTE,
    call_tagged,
    call_tagged_async,
    tag,
    transaction_id_between,
)
from ._transport import AsyncReveniumTransport, ReveniumTransport

METERED_METHODS = ("chat", "generate", "embed", "embeddings")

_lock = threading.RLock()
# (owner, attribute name, original value), in the order they were patched.
_patches: list[tuple[Any, str, Any]] = []
# httpx / httpx2 clients metered in place -> their original transport and mounts.
_instrumented: weakref.WeakKeyDictionary[Any, tuple[Any, dict[Any, Any]]] = (
    weakref.WeakKeyDictionary()
)


def _wrap(transport: Any, asynchronous: bool) -> Any:
    if transport is None or isinstance(transport, (ReveniumTransport, AsyncReveniumTransport)):
        return transport
    # Decided by the client, not the transport: some (MockTransport) serve both kinds.
    return AsyncReveniumTransport(transport) if asynchronous else ReveniumTransport(transport)


def instrument(client: Any) -> Any:
    """Meters an existing client in place and returns it.

    ``client`` is an ``ollama.Client`` or ``AsyncClient``, or a bare ``httpx`` /
    ``httpx2`` client, sync or async. Its transport and mounts are wrapped, so its own
    settings (proxies included) keep working. Instrumenting twice changes nothing.
    """
    http = getattr(client, "_client", client)
    if not hasattr(http, "_transport") or not hasattr(http, "_mounts"):
        raise TypeError(
            f"instrument() takes an ollama or httpx client, not {type(client).__name__}"
        )
    with _lock:
        if http in _instrumented:
            return client
        transport, mounts = http._transport, dict(http._mounts)
        asynchronous = hasattr(http, "aclose")  # httpx.AsyncClient, not httpx.Client
        http._transport = _wrap(transport, asynchronous)
        http._mounts = {
            pattern: _wrap(mounted, asynchronous) for pattern, mounted in mounts.items()
        }
        _instrumented[http] = (transport, mounts)
    return client


def _layer(usage_metadata: object) -> Mapping[str, Any] | None:
    layer = as_layer(usage_metadata)
    if layer:
        check(layer)
    return layer or None


def _tagged_stream(
    parts: Iterator[Any], before: str | int | None, layer: Mapping[str, Any] | None
) -> Iterator[Any]:
    """Yields a stream's parts, each tagged; the request leaves at the first ``next``."""
    try:
        token = call_metadata.set(layer) if layer is not None else None
        try:
            first = next(parts)
        except StopIteration:
            return
        finally:
            if token is not None:
                call_metadata.reset(token)
        transaction_id = transaction_id_between(before, last_sync_call.transaction)
        tag(first, transaction_id)
        yield first
        if transaction_id is None:
            yield from parts
            return
        for part in parts:
            try:  # noqa: SIM105 - per chunk: suppress() would cost a context manager
                # Straight into the instance dict: the cheapest store, and pydantic leaves
                # it out of dumps. A part without one (not a model) goes untagged.
                part.__dict__[TRANSACTION_ATTRIBUTE] = transaction_id
            except AttributeError:
                pass
            yield part
    finally:
        close = getattr(parts, "close", None)
        if close is not None:
            close()  # stopping early closes the response, which ends the call's record


async def _tagged_async_stream(
    parts: AsyncIterator[Any], before: str | int | None, layer: Mapping[str, Any] | None
) -> AsyncIterator[Any]:
    try:
        token = call_metadata.set(layer) if layer is not None else None
        try:
            first = await parts.__anext__()
        except StopAsyncIteration:
            return
        finally:
            if token is not None:
                call_metadata.reset(token)
        transaction_id = transaction_id_between(before, last_async_call.get())
        tag(first, transaction_id)
        yield first
        async for part in parts:
            tag(part, transaction_id)
            yield part
    finally:
        aclose = getattr(parts, "aclose", None)
        if aclose is not None:
            await aclose()


def _sync_method(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def metered(
        self: Any, *args: Any, usage_metadata: Mapping[str, Any] | None = None, **kwargs: Any
    ) -> Any:
        # The common path is exact_wrapper's; this one serves the rest.
        layer = None if usage_metadata is None else _layer(usage_metadata)
        if kwargs.get("stream"):
            before = last_sync_call.transaction
            return _tagged_stream(original(self, *args, **kwargs), before, layer)
        return call_tagged(lambda: original(self, *args, **kwargs), layer)

    return exact_wrapper(original, metered, asynchronous=False) or metered


def _async_method(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    async def metered(
        self: Any, *args: Any, usage_metadata: Mapping[str, Any] | None = None, **kwargs: Any
    ) -> Any:
        layer = None if usage_metadata is None else _layer(usage_metadata)
        if kwargs.get("stream"):
            before = last_async_call.get()
            return _tagged_async_stream(await original(self, *args, **kwargs), before, layer)
        return await call_tagged_async(lambda: original(self, *args, **kwargs), layer)

    return exact_wrapper(original, metered, asynchronous=True) or metered


def _metered_init(original: Callable[..., None]) -> Callable[..., None]:
    @functools.wraps(original)
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        try:
            instrument(self)
        except Exception:
            internal_failure("instrument")

    return __init__


def _patch(owner: Any, name: str, value: Any) -> None:
    _patches.append(
        (owner, name, owner.__dict__[name] if isinstance(owner, type) else getattr(owner, name))
    )
    setattr(owner, name, value)


def _deliver_on_signal() -> None:
    # Records exist only once the delivery layer is loaded (their first one loads it).
    dispatcher = _sink.loaded_delivery()
    if dispatcher is not None:
        dispatcher.shutdown_on_signal()


def _start_if_spooled() -> None:
    """Starts delivery at once when the spool holds records (from an earlier process); the
    delivery layer is loaded only then."""
    try:
        if has_waiting(_config.current().spool_dir):
            _sink.delivery().start_if_spooled()
    except Exception:
        internal_failure("spool-start")


def _install_openai() -> None:
    with _lock:
        try:
            install_openai(_patch, instrument)
        except Exception:  # an openai too different from the ones we know: leave it be
            internal_failure("install-openai")


_openai_hook = AfterImport("openai", _install_openai)


def install() -> bool:
    """Meters ``ollama`` (and the ``openai`` SDK, now or when it is imported) with no
    code change; runs on import. Idempotent. False when there was nothing to do: already
    installed, or ``REVENIUM_METERING_ENABLED=false``."""
    with _lock:
        if _patches or not _sink.metering_enabled:
            return False
        import ollama  # noqa: PLC0415 - only now: the package itself is usable without it

        module = sys.modules["ollama._client"]
        for cls, wrap in ((module.Client, _sync_method), (module.AsyncClient, _async_method)):
            _patch(cls, "__init__", _metered_init(cls.__dict__["__init__"]))
            for name in METERED_METHODS:
                if name in cls.__dict__:
                    _patch(cls, name, wrap(cls.__dict__[name]))
        default = getattr(ollama, "_client", None)
        if isinstance(default, module.Client):
            instrument(default)
            # ollama.chat and friends are methods bound when ollama was imported.
            for name in METERED_METHODS:
                if hasattr(ollama, name):
                    _patch(ollama, name, getattr(default, name))
        if "openai" in sys.modules:
            _install_openai()
        else:
            _openai_hook.install()
        _signals.install(_deliver_on_signal)
        _start_if_spooled()
        return True


def uninstall() -> None:
    """Undoes ``install`` and every ``instrument``: each patched object is as it was."""
    with _lock:
        _signals.uninstall()
        _openai_hook.remove()
        while _patches:
            owner, name, original = _patches.pop()
            setattr(owner, name, original)
        for http, (transport, mounts) in list(_instrumented.items()):
            http._transport = transport
            http._mounts = mounts
        _instrumented.clear()
