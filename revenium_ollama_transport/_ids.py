"""Transaction ids: random (version 4) UUID strings, most of them made ahead of time.

Formatting a UUID costs more than the rest of a call's bookkeeping on the caller's path,
so the delivery thread keeps a reserve of ready ids while it is idle, and a call takes
one with a deque pop. When the reserve has run dry, a call takes only random bits, which
are formatted when the id is first needed (``format_id``), often in the delivery thread.
"""

from __future__ import annotations

import os
import random
from collections import deque

# Private, seeded from the OS: an application's random.seed() must not make ids repeat.
_random = random.Random()
_ready: deque[str] = deque()
RESERVE = 1024

# The version (4) and variant (10) bits of a random UUID.
_CLEAR = ~((0xF << 76) | (0x3 << 62))
_SET = (0x4 << 76) | (0x2 << 62)


def new_bits() -> int:
    return _random.getrandbits(128) & _CLEAR | _SET


def format_id(bits: int) -> str:
    text = bits.to_bytes(16, "big").hex()  # the fastest of the ways measured
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"


def new_id() -> str:
    return format_id(new_bits())


def take() -> str | int:
    """A ready id, or the random bits of one when the reserve is empty."""
    ready = _ready
    if ready:
        try:
            return ready.pop()
        except IndexError:  # another thread took the last one
            pass
    return new_bits()


def replenish(below: int = RESERVE) -> None:
    """Tops the reserve up if it holds fewer than ``below`` ids; for the delivery thread."""
    ready = _ready
    if len(ready) < below:
        for _ in range(RESERVE - len(ready)):
            ready.append(new_id())


def _after_fork_in_child() -> None:
    # A child must never hand out its parent's ids.
    _ready.clear()
    _random.seed()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
