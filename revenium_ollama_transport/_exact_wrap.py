"""The installed wrappers' common path, with the wrapped method's own parameters.

A wrapper taking ``*args, **kwargs`` packs every call's arguments into a tuple and a dict,
then unpacks them to pass them on: about half of what wrapping ``chat`` adds to a call.
For a method whose parameters are plain (positional-or-keyword, then keyword-only), this
makes a function with those same parameters and ``usage_metadata=``, which passes them on
as they came and tags the result. A call with ``usage_metadata=`` or ``stream=True`` goes
on to the generic wrapper, which handles everything.
"""

from __future__ import annotations

import functools
import inspect
import keyword
from collections.abc import Callable
from typing import Any

from ._ids import format_id
from ._observation import last_async_call, last_sync_call
from ._tagging import TRANSACTION_ATTRIBUTE

# Every name the made function uses besides the method's parameters starts with this; a
# method with a parameter that does too keeps the generic wrapper.
_OURS = "_rv_"

# The body: the generic wrappers' common path (and _tagging.tag), written out: on every call.
_SOURCE = """
{async_}def {name}(_rv_self, {parameters}):
    if usage_metadata is not None{or_stream}:
        return {await_}_rv_generic({arguments}, usage_metadata=usage_metadata)
    _rv_before = {last}
    _rv_result = {await_}_rv_original({arguments})
    _rv_after = {last}
    if _rv_after is not _rv_before and _rv_after is not None:
        _rv_id = _rv_after if _rv_after.__class__ is str else _rv_format(_rv_after)
        try:
            _rv_result.__dict__[_rv_attribute] = _rv_id
        except (AttributeError, TypeError):
            pass
    return _rv_result
"""


def exact_wrapper(
    original: Callable[..., Any], generic: Callable[..., Any], asynchronous: bool
) -> Callable[..., Any] | None:
    """A wrapper of ``original`` (a method) with its parameters, or None when they are not
    plain ones (then ``generic`` serves every call)."""
    try:
        parameters = list(inspect.signature(original).parameters.values())
    except (TypeError, ValueError):
        return None
    name = getattr(original, "__name__", "")
    if not parameters or not _usable(name):
        return None
    namespace: dict[str, Any] = {
        "_rv_original": original,
        "_rv_generic": generic,
        "_rv_format": format_id,
        "_rv_attribute": TRANSACTION_ATTRIBUTE,
        "_rv_last": last_sync_call,
        "_rv_last_get": last_async_call.get,
    }
    declared: list[str] = []
    arguments = ["_rv_self"]
    keyword_only: list[str] = []
    for index, parameter in enumerate(parameters[1:]):  # the first is self
        if not _usable(parameter.name) or parameter.name == "usage_metadata":
            return None
        text = parameter.name
        if parameter.default is not inspect.Parameter.empty:
            namespace[f"_rv_default{index}"] = parameter.default  # the same object
            text = f"{parameter.name}=_rv_default{index}"
        if parameter.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD:
            declared.append(text)
            arguments.append(parameter.name)
        elif parameter.kind is inspect.Parameter.KEYWORD_ONLY:
            keyword_only.append(text)
            arguments.append(f"{parameter.name}={parameter.name}")
        else:  # *args, **kwargs or positional-only: the generic wrapper's job
            return None
    if parameters[0].kind is not inspect.Parameter.POSITIONAL_OR_KEYWORD:
        return None
    source = _SOURCE.format(
        async_="async " if asynchronous else "",
        await_="await " if asynchronous else "",
        name=name,
        parameters=", ".join([*declared, "*", *keyword_only, "usage_metadata=None"]),
        or_stream=" or stream" if any(p.name == "stream" for p in parameters) else "",
        arguments=", ".join(arguments),
        last="_rv_last_get()" if asynchronous else "_rv_last.transaction",
    )
    qualname = getattr(original, "__qualname__", name)
    exec(compile(source, f"<revenium_ollama_transport wrapper of {qualname}>", "exec"), namespace)
    return functools.update_wrapper(namespace[name], original)


def _usable(name: str) -> bool:
    return name.isidentifier() and not keyword.iskeyword(name) and not name.startswith(_OURS)
