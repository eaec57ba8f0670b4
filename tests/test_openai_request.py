"""What the transport changes in requests to OpenAI-compatible routes, and what it leaves."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from revenium_ollama_transport._routes import route_for
from revenium_ollama_transport._wire._openai_request import UNCHANGED, rewrite


def body(**fields: object) -> bytes:
    return orjson.dumps({"model": "gemma2:2b", "messages": [], **fields})


def test_a_request_mentioning_neither_key_is_not_even_parsed() -> None:
    assert rewrite("chat", b"not json at all") is UNCHANGED
    assert rewrite("chat", body()) is UNCHANGED


@pytest.mark.parametrize("kind", ["chat", "completion"])
def test_usage_is_asked_for_on_a_stream(kind: str) -> None:
    change = rewrite(kind, body(stream=True, stream_options={"other": 1}))
    assert change.usage_injected
    assert change.streamed
    assert change.body is not None
    forwarded = orjson.loads(change.body)
    assert forwarded["stream_options"] == {"other": 1, "include_usage": True}
    assert forwarded["model"] == "gemma2:2b"


@pytest.mark.parametrize(
    "fields",
    [
        {"stream": True, "stream_options": {"include_usage": True}},
        {"stream": False},
        {"stream": "yes"},
    ],
)
def test_no_change_when_usage_was_asked_for_or_nothing_streams(fields: dict[str, object]) -> None:
    change = rewrite("chat", body(**fields))
    assert change.body is None
    assert not change.usage_injected


@pytest.mark.parametrize("kind", ["embedding", "response"])
def test_other_kinds_never_get_include_usage(kind: str) -> None:
    change = rewrite(kind, body(stream=True))
    assert change.body is None
    assert change.streamed


def test_usage_metadata_is_taken_out() -> None:
    change = rewrite("embedding", body(usage_metadata={"trace_id": "t"}, input="x"))
    assert change.metadata == {"trace_id": "t"}
    assert change.body is not None
    assert b"usage_metadata" not in change.body
    assert orjson.loads(change.body)["input"] == "x"


def test_usage_metadata_of_the_wrong_type_is_still_taken_out() -> None:
    change = rewrite("chat", body(usage_metadata="acme"))
    assert change.metadata == "acme"
    assert change.body is not None
    assert b"usage_metadata" not in change.body


@settings(max_examples=300, deadline=None)
@given(
    raw=st.binary(max_size=300),
    kind=st.sampled_from(["chat", "completion", "embedding", "response"]),
)
def test_arbitrary_bytes_never_raise(raw: bytes, kind: str) -> None:
    change = rewrite(kind, b'{"stream":true,' + raw)
    assert change.body is None or b"include_usage" in change.body


@pytest.mark.parametrize(
    ("path", "operation", "kind"),
    [
        (b"/v1/chat/completions", "CHAT", "chat"),
        (b"/v1/completions", "GENERATE", "completion"),
        (b"/v1/embeddings", "EMBED", "embedding"),
        (b"/v1/responses", "CHAT", "response"),
        (b"/gateway/ollama/v1/chat/completions", "CHAT", "chat"),
        (b"/v1/chat/completions/", "CHAT", "chat"),
    ],
)
def test_openai_routes(path: bytes, operation: str, kind: str) -> None:
    route = route_for("POST", path)
    assert route is not None
    assert (route.operation, route.api, route.kind) == (operation, "openai", kind)


@pytest.mark.parametrize("path", [b"/v1/models", b"/v1/messages", b"/v2/chat/completions"])
def test_other_v1_paths_pass_through(path: bytes) -> None:
    assert route_for("POST", path) is None
    assert route_for("GET", b"/v1/chat/completions") is None
