"""Which verdicts are held out: a hash of the event id, so a rebuild (with more verdicts, or
after a verdict changed) keeps every event on the side it was on."""

from __future__ import annotations

from training.heads.train import TEST, TRAIN, hashed_fraction

__all__ = ["HELD_OUT_FRACTION", "TEST", "TRAIN", "split_of"]

HELD_OUT_FRACTION = 0.3
"""The share of verdicts held out, as the heads trainer holds out unsplit rows."""


def split_of(event_id: str, fraction: float = HELD_OUT_FRACTION, salt: str = "feedback") -> str:
    """``test`` for about ``fraction`` of event ids, ``train`` for the rest; the same answer
    for the same id, on every machine and run."""
    return TEST if hashed_fraction(f"{salt}/{event_id}") < fraction else TRAIN
