"""Transaction ids: well-formed v4 UUIDs, never repeated, not even across a fork or a seed."""

from __future__ import annotations

import os
import random
import uuid

import pytest

from revenium_ollama_transport import _ids


def test_ids_are_distinct_v4_uuids_from_the_reserve_and_without_it() -> None:
    _ids.replenish()
    assert len(_ids._ready) == _ids.RESERVE
    taken = [_ids.take() for _ in range(_ids.RESERVE + 500)]  # runs the reserve dry
    assert all(isinstance(t, int) for t in taken[_ids.RESERVE :])
    made = [t if isinstance(t, str) else _ids.format_id(t) for t in taken]
    assert len(set(made)) == len(made)
    for text in made[::97]:
        parsed = uuid.UUID(text)
        assert str(parsed) == text
        assert parsed.version == 4
        assert parsed.variant == uuid.RFC_4122


def test_an_application_seed_does_not_repeat_ids() -> None:
    random.seed(42)
    first = _ids.new_id()
    random.seed(42)
    assert _ids.new_id() != first


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_never_hands_out_its_parents_ids() -> None:
    _ids.replenish()
    parent_next = list(_ids._ready)[-5:]
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report its next ids, then leave at once
        try:
            taken = [_ids.take() for _ in range(5)]
            os.write(
                write,
                " ".join(t if isinstance(t, str) else _ids.format_id(t) for t in taken).encode(),
            )
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        child_ids = pipe.read().split()
    os.waitpid(pid, 0)
    assert len(child_ids) == 5
    assert not set(child_ids) & set(parent_next)
    assert not set(child_ids) & set(_ids._ready)
