"""Which requests are metered, and what kind of call each one is."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ._wire._openai import Kind

NATIVE = "native"
OPENAI = "openai"


@dataclass(frozen=True)
class Route:
    """A metered endpoint. ``path`` is the canonical path, without any host prefix;
    ``kind`` tells the OpenAI-compatible routes' body shapes apart."""

    path: str
    operation: str
    api: str = NATIVE
    kind: Kind = "chat"  # which OpenAI shape; read only when api is OPENAI
    embeddings: bool = False
    # What the Content-Type of its streamed responses holds: NDJSON natively, SSE on /v1.
    stream_type: bytes = field(init=False, repr=False)

    def __post_init__(self) -> None:
        stream_type = b"ndjson" if self.api == NATIVE else b"event-stream"
        object.__setattr__(self, "stream_type", stream_type)  # frozen: set once, here


_ROUTES: dict[bytes, Route] = {
    b"/api/chat": Route("/api/chat", "CHAT"),
    b"/api/generate": Route("/api/generate", "GENERATE"),
    b"/api/embed": Route("/api/embed", "EMBED", embeddings=True),
    b"/api/embeddings": Route("/api/embeddings", "EMBED", embeddings=True),
    b"/v1/chat/completions": Route("/v1/chat/completions", "CHAT", OPENAI, "chat"),
    b"/v1/completions": Route("/v1/completions", "GENERATE", OPENAI, "completion"),
    b"/v1/embeddings": Route("/v1/embeddings", "EMBED", OPENAI, "embedding", embeddings=True),
    b"/v1/responses": Route("/v1/responses", "CHAT", OPENAI, "response"),
}


def route_for(method: str, raw_path: bytes) -> Route | None:
    """The metered route for a request, or None to pass it through unparsed.

    ``raw_path`` is the request target (path and query, as sent). Ollama may sit behind a
    path prefix (``OLLAMA_HOST=http://gw/ollama``), so a path that does not match exactly
    is matched on its ``/api/...`` or ``/v1/...`` tail.
    """
    if method != "POST":
        return None
    route = _ROUTES.get(raw_path)
    if route is not None:
        return route
    path = raw_path.partition(b"?")[0].rstrip(b"/")
    cut = max(path.rfind(b"/api/"), path.rfind(b"/v1/"))
    return _ROUTES.get(path[cut:] if cut > 0 else path)


_BY_PATH: dict[str, Route] = {path.decode(): route for path, route in _ROUTES.items()}


def route_for_url(method: str, url: Any) -> Route | None:
    """``route_for(method, url.raw_path)``, without building ``raw_path`` in the common
    case: an httpx / httpx2 URL whose path, with no query, is a route's own."""
    if method != "POST":
        return None
    reference = getattr(url, "_uri_reference", None)
    if reference is not None and reference.query is None:
        route = _BY_PATH.get(reference.path)
        if route is not None:
            return route
    return route_for(method, url.raw_path)
