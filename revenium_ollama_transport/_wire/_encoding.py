"""Decoders for ``Content-Encoding``, so a compressing proxy does not blind the parsers.

The caller still receives the compressed bytes untouched; the parser reads a decoded copy.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from typing import Any

Decode = Callable[[bytes], bytes]


class _Zlib:
    __slots__ = ("_obj",)

    def __init__(self, wbits: int) -> None:
        self._obj = zlib.decompressobj(wbits)

    def __call__(self, data: bytes) -> bytes:
        return self._obj.decompress(data)


class _Deflate:
    """``deflate`` is zlib-wrapped by the RFC but raw in some servers: try both."""

    __slots__ = ("_obj", "_started")

    def __init__(self) -> None:
        self._obj: Any = zlib.decompressobj()
        self._started = False

    def __call__(self, data: bytes) -> bytes:
        if not self._started and data:
            self._started = True
            try:
                return bytes(self._obj.decompress(data))
            except zlib.error:
                self._obj = zlib.decompressobj(-zlib.MAX_WBITS)
        return bytes(self._obj.decompress(data))


def _optional_decoder(encoding: str) -> Decode | None:
    """Brotli and zstd only when the user has a library for them installed."""
    try:
        if encoding == "br":
            try:
                import brotli  # type: ignore[import-not-found]  # noqa: PLC0415
            except ImportError:
                import brotlicffi as brotli  # type: ignore[import-not-found]  # noqa: PLC0415
            decompressor = brotli.Decompressor()
            return lambda data: bytes(decompressor.process(data))
        if encoding == "zstd":
            import zstandard  # type: ignore[import-not-found]  # noqa: PLC0415

            stream = zstandard.ZstdDecompressor().decompressobj()
            return lambda data: bytes(stream.decompress(data))
    except ImportError:
        return None
    return None


def _single(encoding: str) -> Decode | None:
    if encoding in ("gzip", "x-gzip"):
        return _Zlib(zlib.MAX_WBITS | 16)
    if encoding == "deflate":
        return _Deflate()
    return _optional_decoder(encoding)


def _chain(first: Decode, second: Decode) -> Decode:
    return lambda data: second(first(data))


def decoder_for(content_encoding: str) -> Decode | None:
    """A decoder for a ``Content-Encoding`` value, or None when one of its codings is unknown.

    ``identity`` alone is not passed here. Codings apply in order, so they decode in reverse.
    """
    codings = [c.strip().lower() for c in content_encoding.split(",")]
    decode: Decode | None = None
    for coding in reversed([c for c in codings if c and c != "identity"]):
        step = _single(coding)
        if step is None:
            return None
        decode = step if decode is None else _chain(decode, step)
    return decode if decode is not None else _identity


def _identity(data: bytes) -> bytes:
    return data
