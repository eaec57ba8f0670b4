"""What the transport changes in a request to an OpenAI-compatible route, and why.

Two things, both only when needed, so most requests are forwarded byte for byte:
- ``usage_metadata`` put in the body by ``extra_body={"usage_metadata": ...}`` is taken
  out: it is ours, and Ollama (or anyone else) must never see it.
- A streamed chat or completions request that did not ask for
  ``stream_options.include_usage`` gets it: without it Ollama sends no token counts at
  all. The transport then hides the extra usage event from the caller.
"""

from __future__ import annotations

from dataclasses import dataclass

import orjson

_USAGE_KINDS = ("chat", "completion")


@dataclass(frozen=True)
class RequestRewrite:
    body: bytes | None  # the body to forward instead, or None to forward the request as is
    metadata: object  # the usage_metadata taken out of the body (None: there was none)
    usage_injected: bool  # include_usage was added on the caller's behalf
    streamed: bool


UNCHANGED = RequestRewrite(None, None, usage_injected=False, streamed=False)


def rewrite(kind: str, body: bytes) -> RequestRewrite:
    # Byte checks first: a request that mentions neither key is forwarded untouched
    # without being parsed.
    if body.find(b'"stream"') < 0 and body.find(b'"usage_metadata"') < 0:  # quicker than "in"
        return UNCHANGED
    try:
        request = orjson.loads(body)
    except orjson.JSONDecodeError:
        return UNCHANGED
    if not isinstance(request, dict):
        return UNCHANGED
    changed = False
    metadata: object = None
    if "usage_metadata" in request:
        metadata = request.pop("usage_metadata")
        changed = True
    streamed = request.get("stream") is True
    injected = False
    if streamed and kind in _USAGE_KINDS:
        options = request.get("stream_options")
        if not isinstance(options, dict) or options.get("include_usage") is not True:
            request["stream_options"] = {
                **(options if isinstance(options, dict) else {}),
                "include_usage": True,
            }
            changed = injected = True
    return RequestRewrite(orjson.dumps(request) if changed else None, metadata, injected, streamed)
