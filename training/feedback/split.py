"""Which verdicts are held out: a hash of the event id, so a rebuild (with more verdicts, or
after a verdict changed) keeps every event on the side it was on."""

from __future__ import annotations

import hashlib

TRAIN, TEST = "train", "test"
HELD_OUT_FRACTION = 0.3
"""The share of verdicts held out, as the heads trainer holds out unsplit rows."""


def split_of(event_id: str, fraction: float = HELD_OUT_FRACTION, salt: str = "feedback") -> str:
    """``test`` for about ``fraction`` of event ids, ``train`` for the rest; the same answer
    for the same id, on every machine and run."""
    digest = hashlib.sha256(f"{salt}/{event_id}".encode()).digest()
    return TEST if int.from_bytes(digest[:8], "big") / 2**64 < fraction else TRAIN
