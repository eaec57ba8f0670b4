"""The installed wrappers' common path made with the wrapped method's own parameters."""

from __future__ import annotations

import asyncio
import inspect
from typing import Any

import ollama
import pytest

from revenium_ollama_transport import _exact_wrap, _observation
from revenium_ollama_transport._exact_wrap import exact_wrapper
from revenium_ollama_transport._tagging import TRANSACTION_ATTRIBUTE

_DEFAULT: list[str] = []  # a default whose identity the wrapper must keep


class Result:
    """What a wrapped method returns: an object with an instance dict, to be tagged."""

    def __init__(self, seen: dict[str, Any]) -> None:
        self.seen = seen


class Methods:
    def plain(
        self, model: str = "", messages: Any = None, *, stream: bool = False, opts: Any = _DEFAULT
    ) -> Result:
        _observation.last_sync_call.transaction = f"id-{model}"
        return Result({"model": model, "messages": messages, "stream": stream, "opts": opts})

    def no_keyword_only(self, model: str, size: int = 3) -> Result:
        _observation.last_sync_call.transaction = 7  # random bits: formatted when tagged
        return Result({"model": model, "size": size})

    async def coroutine(self, model: str = "", *, stream: bool = False) -> Result:
        _observation.last_async_call.set(f"async-{model}")
        return Result({"model": model, "stream": stream})

    def star_args(self, *args: Any, **kwargs: Any) -> None: ...

    def positional_only(self, model: str, /) -> None: ...

    def own_metadata(self, usage_metadata: Any = None) -> None: ...

    def our_prefix(self, _rv_before: int = 0) -> None: ...


def generic_recorder(calls: list[tuple[Any, ...]]) -> Any:
    def generic(self: Any, *args: Any, **kwargs: Any) -> str:
        calls.append((self, args, kwargs))
        return "generic"

    return generic


def test_arguments_pass_as_they_came_and_the_result_is_tagged() -> None:
    calls: list[tuple[Any, ...]] = []
    wrapper = exact_wrapper(Methods.plain, generic_recorder(calls), asynchronous=False)
    assert wrapper is not None
    methods = Methods()
    _observation.last_sync_call.transaction = None
    result = wrapper(methods, "m", [1], opts=5)
    assert result.seen == {"model": "m", "messages": [1], "stream": False, "opts": 5}
    assert result.__dict__[TRANSACTION_ATTRIBUTE] == "id-m"
    result = wrapper(methods, messages=[2])
    assert result.seen["model"] == "" and result.seen["opts"] is _DEFAULT
    assert calls == []  # the common path never reached the generic wrapper


def test_metadata_and_streams_go_to_the_generic_wrapper() -> None:
    calls: list[tuple[Any, ...]] = []
    wrapper = exact_wrapper(Methods.plain, generic_recorder(calls), asynchronous=False)
    assert wrapper is not None
    methods = Methods()
    assert wrapper(methods, "m", stream=True) == "generic"
    assert wrapper(methods, "m", usage_metadata={"organization_id": "o"}) == "generic"
    assert calls == [
        (methods, ("m", None), {"stream": True, "opts": _DEFAULT, "usage_metadata": None}),
        (
            methods,
            ("m", None),
            {"stream": False, "opts": _DEFAULT, "usage_metadata": {"organization_id": "o"}},
        ),
    ]


def test_random_bits_are_formatted_and_a_call_without_a_transaction_is_not_tagged() -> None:
    wrapper = exact_wrapper(Methods.no_keyword_only, generic_recorder([]), asynchronous=False)
    assert wrapper is not None
    _observation.last_sync_call.transaction = None
    result = wrapper(Methods(), "m")
    assert result.seen == {"model": "m", "size": 3}
    assert result.__dict__[TRANSACTION_ATTRIBUTE] == "00000000-0000-0000-0000-000000000007"

    def untouched(self: Any, model: str) -> Result:
        return Result({})

    same = exact_wrapper(untouched, generic_recorder([]), asynchronous=False)
    assert same is not None
    _observation.last_sync_call.transaction = "an earlier call"
    assert TRANSACTION_ATTRIBUTE not in same(Methods(), "m").__dict__


def test_the_coroutine_counterpart() -> None:
    calls: list[tuple[Any, ...]] = []

    async def generic(self: Any, *args: Any, **kwargs: Any) -> str:
        calls.append((args, kwargs))
        return "generic"

    wrapper = exact_wrapper(Methods.coroutine, generic, asynchronous=True)
    assert wrapper is not None and inspect.iscoroutinefunction(wrapper)

    async def main() -> tuple[Any, Any]:
        return await wrapper(Methods(), "m"), await wrapper(Methods(), "m", stream=True)

    tagged, streamed = asyncio.run(main())
    assert tagged.__dict__[TRANSACTION_ATTRIBUTE] == "async-m"
    assert streamed == "generic" and calls == [(("m",), {"stream": True, "usage_metadata": None})]


def test_wrong_arguments_fail_as_the_method_would() -> None:
    wrapper = exact_wrapper(Methods.plain, generic_recorder([]), asynchronous=False)
    assert wrapper is not None
    with pytest.raises(TypeError, match="unexpected keyword argument 'colour'"):
        wrapper(Methods(), colour=1)
    with pytest.raises(TypeError, match="positional argument"):
        wrapper(Methods(), "m", [], True)  # stream is keyword-only


@pytest.mark.parametrize(
    "method",
    [Methods.star_args, Methods.positional_only, Methods.own_metadata, Methods.our_prefix],
)
def test_other_signatures_keep_the_generic_wrapper(method: Any) -> None:
    assert exact_wrapper(method, generic_recorder([]), asynchronous=False) is None


def test_the_wrapper_looks_like_the_method() -> None:
    wrapper = exact_wrapper(Methods.plain, generic_recorder([]), asynchronous=False)
    assert wrapper is not None
    assert wrapper.__name__ == "plain" and wrapper.__qualname__ == "Methods.plain"
    assert inspect.signature(wrapper) == inspect.signature(Methods.plain)


@pytest.mark.parametrize("cls", [ollama.Client, ollama.AsyncClient])
@pytest.mark.parametrize("name", ["chat", "generate", "embed", "embeddings"])
def test_ollamas_methods_take_the_common_path(cls: type, name: str) -> None:
    # If an ollama release changes these signatures, the generic wrapper still serves the
    # calls (slower): this says so.
    method = cls.__dict__[name]
    assert method.__code__.co_filename.startswith(f"<{_exact_wrap.__package__} wrapper of")
