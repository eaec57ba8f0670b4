"""Telling a caller its call's transaction id: an attribute on what the client returned."""

from __future__ import annotations

from typing import Any

from ._observation import CallObservation

TRANSACTION_ATTRIBUTE = "_revenium_transaction_id"


def transaction_id_between(
    before: CallObservation | None, after: CallObservation | None
) -> str | None:
    """The id of the call made between two looks at the last observation, if it made one."""
    return None if after is None or after is before else after.transaction_id


def tag(response: Any, transaction_id: str | None) -> None:
    if transaction_id is not None:
        try:  # noqa: SIM105 - on every call: suppress() would cost a context manager
            # Past pydantic's __setattr__ (5x slower): the attribute stays out of dumps.
            object.__setattr__(response, TRANSACTION_ATTRIBUTE, transaction_id)
        except (AttributeError, TypeError):
            pass
