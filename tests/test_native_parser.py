"""The native NDJSON parser: facts from whole and split bodies, and no escaping exceptions."""

from __future__ import annotations

import itertools
import json

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from revenium_ollama_transport._wire._native import NativeParser, error_message

from . import _streams


def parse(chunks: list[bytes]) -> tuple[NativeParser, list[int]]:
    """Feeds ``chunks``; returns the parser and the indexes of reads that reported a first token."""
    parser = NativeParser()
    firsts = [i for i, chunk in enumerate(chunks) if parser.feed(chunk)]
    if parser.finish():
        firsts.append(len(chunks))
    parser.resolve()
    return parser, firsts


def facts(parser: NativeParser) -> tuple[object, ...]:
    return (
        parser.token_chunks,
        parser.first_token_seen,
        parser.tool_calls,
        parser.final,
        parser.error,
        parser.malformed_lines,
    )


def lines(body: bytes) -> list[bytes]:
    return body.splitlines(keepends=True)


def test_chat_stream_counts_chunks_and_reads_final() -> None:
    parser, firsts = parse(lines(_streams.CHAT_STREAM))
    assert parser.token_chunks == 3
    assert firsts == [0]
    assert parser.final is not None
    assert parser.final["prompt_eval_count"] == 12
    assert parser.final["done_reason"] == "stop"
    assert parser.error is None
    assert not parser.tool_calls


def test_generate_stream() -> None:
    parser, firsts = parse(lines(_streams.GENERATE_STREAM))
    assert (parser.token_chunks, firsts) == (2, [0])
    assert parser.final is not None
    assert parser.final["eval_count"] == 2


def test_tool_calls_on_an_intermediate_chunk_are_seen() -> None:
    parser, firsts = parse(lines(_streams.TOOL_STREAM))
    assert parser.tool_calls
    assert firsts == [0]


def test_tool_calls_after_the_first_token_are_seen() -> None:
    body = _streams.chat_line("Let me check.") + _streams.TOOL_STREAM
    parser, _ = parse(lines(body))
    assert parser.tool_calls
    assert parser.token_chunks == 2


def test_tool_calls_on_the_final_chunk_are_seen() -> None:
    final = _streams.final_line(
        message={"role": "assistant", "content": "", "tool_calls": [_streams.TOOL_CALL]}
    )
    parser, _ = parse(lines(_streams.chat_line("x") + final))
    assert parser.tool_calls


def test_thinking_counts_as_the_first_token() -> None:
    parser, firsts = parse(lines(_streams.THINKING_STREAM))
    assert firsts == [0]
    assert parser.token_chunks == 3


def test_empty_first_chunk_does_not_count_as_first_token() -> None:
    body = _streams.chat_line("") + _streams.chat_line("Hi") + _streams.final_line()
    parser, firsts = parse(lines(body))
    assert firsts == [1]
    assert parser.token_chunks == 2


def test_error_line_mid_stream() -> None:
    parser, _ = parse(lines(_streams.ERROR_STREAM))
    assert parser.error == "model runner crashed"
    assert parser.final is None
    assert parser.token_chunks == 2


def test_non_streamed_body_without_newline() -> None:
    parser, firsts = parse([_streams.NON_STREAMED_CHAT])
    assert parser.final is not None
    assert parser.final["eval_count"] == 7
    assert parser.token_chunks == 0
    assert firsts == []


def test_long_body_is_parsed_only_on_resolve() -> None:
    parser = NativeParser()
    parser.feed(_streams.EMBED_BODY)
    parser.finish()
    assert parser.final is None  # nothing parsed on the caller's path
    parser.resolve()
    assert parser.final is not None
    assert parser.final["prompt_eval_count"] == 8


def test_fields_in_another_order_are_still_read_exactly() -> None:
    def reordered(content: str) -> bytes:
        obj = {"done": False, "message": {"content": content, "role": "assistant"}, "model": "m"}
        return orjson.dumps(obj) + b"\n"

    body = reordered("a") + reordered("b") + reordered("c") + _streams.final_line()
    parser, firsts = parse(lines(body))
    assert (parser.token_chunks, firsts) == (3, [0])


def test_several_lines_in_one_read_are_all_counted() -> None:
    parser, _ = parse([_streams.CHAT_STREAM])
    assert parser.token_chunks == 3
    assert parser.final is not None


def test_crlf_line_ends() -> None:
    parser, _ = parse([_streams.CHAT_STREAM.replace(b"\n", b"\r\n")])
    assert parser.token_chunks == 3
    assert parser.final is not None


def test_malformed_lines_are_counted_not_raised() -> None:
    parser, _ = parse([b"not json\n", b"[1,2]\n", _streams.final_line()])
    assert parser.malformed_lines == 2
    assert parser.final is not None


@pytest.mark.parametrize(
    ("obj", "message"),
    [
        ({"error": "boom"}, "boom"),
        ({"error": {"message": "bad model", "type": "api_error"}}, "bad model"),
        ({"error": {"code": 5}}, '{"code":5}'),
        ({"done": True}, None),
        ("text", None),
    ],
)
def test_error_message_shapes(obj: object, message: str | None) -> None:
    assert error_message(obj) == message


def split_at(body: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c for c in cuts if 0 < c < len(body)})
    edges = [0, *points, len(body)]
    return [body[a:b] for a, b in itertools.pairwise(edges)]


@pytest.mark.parametrize("name", sorted(_streams.ALL_BODIES))
def test_every_single_split_gives_the_same_facts(name: str) -> None:
    body = _streams.ALL_BODIES[name]
    whole, _ = parse(lines(body) if body.endswith(b"\n") else [body])
    for cut in range(1, len(body)):
        split, _ = parse(split_at(body, [cut]))
        assert facts(split) == facts(whole), f"{name} split at byte {cut}"


@settings(max_examples=300, deadline=None)
@given(
    name=st.sampled_from(sorted(_streams.ALL_BODIES)),
    cuts=st.lists(st.integers(min_value=1, max_value=4000), max_size=30),
)
def test_any_splits_give_the_same_facts(name: str, cuts: list[int]) -> None:
    body = _streams.ALL_BODIES[name]
    whole, _ = parse([body])
    split, _ = parse(split_at(body, cuts))
    assert facts(split) == facts(whole)


@settings(max_examples=500, deadline=None)
@given(chunks=st.lists(st.binary(max_size=200), max_size=20))
def test_arbitrary_bytes_never_raise(chunks: list[bytes]) -> None:
    parser, _ = parse(chunks)
    assert parser.token_chunks >= 0


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(objects=st.lists(json_values, max_size=8), cuts=st.lists(st.integers(1, 2000), max_size=10))
def test_arbitrary_json_lines_never_raise(objects: list[object], cuts: list[int]) -> None:
    body = b"".join(json.dumps(o).encode() + b"\n" for o in objects)
    parser, _ = parse(split_at(body, cuts))
    assert parser.malformed_lines <= len(objects)
