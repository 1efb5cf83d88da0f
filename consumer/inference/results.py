"""From the rows a model answered back to one result per image.

An animated image was sent as several rows (its sampled frames) and scores, per category, as
its worst frame; an image sent encoded may have been refused by Triton's preprocess step.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from consumer.contract.reasons import ReasonCode
from consumer.errors import EventRejected, ImageRejected, InferenceRejected
from consumer.inference.shadow import ShadowScores
from consumer.moderation.heads import HeadsDescriptor


@dataclass(frozen=True)
class Scores:
    """One image's model outputs."""

    probs: npt.NDArray[np.float32]
    """Per category, the highest over the sampled frames."""
    embedding: npt.NDArray[np.float32]
    """Of the first frame."""
    seconds: float
    """Inference time of the requests that carried the image."""
    pool_entropy: float | None
    """Entropy of the pool's mean prediction, highest over the frames; None without a pool."""
    prototype_similarity: npt.NDArray[np.float32] | None
    """Per category, the lowest over the frames; None when the model has no prototypes."""
    head_scores: npt.NDArray[np.float32] | None = None
    """Per head of ``heads``, the highest over the frames; None without a heads model."""
    heads: HeadsDescriptor | None = None
    """The heads version that scored the image."""
    shadow: ShadowScores | None = None
    """The candidate heads version's scores, when one is shadowed."""


@dataclass(frozen=True)
class Rows:
    """Results for every row (frame) sent, in order."""

    probs: npt.NDArray[np.float32]
    embeddings: npt.NDArray[np.float32]
    seconds: float
    prototype_similarity: npt.NDArray[np.float32] | None
    pool_entropy: npt.NDArray[np.float32] | None
    head_scores: npt.NDArray[np.float32] | None = None
    heads: HeadsDescriptor | None = None
    preprocess_status: tuple[str, ...] = ()
    preprocess_detail: tuple[str, ...] = ()


def per_image(
    rows: Rows,
    counts: list[int],
    shadow: tuple[HeadsDescriptor, npt.NDArray[np.float32]] | None,
) -> list[Scores | EventRejected | InferenceRejected]:
    """``counts[i]`` rows belong to image ``i``, in order."""
    results: list[Scores | EventRejected | InferenceRejected] = []
    start = 0
    for count in counts:
        frames = slice(start, start + count)
        if rows.preprocess_status and rows.preprocess_status[start]:
            results.append(_refusal(rows.preprocess_status[start], rows.preprocess_detail))
            start += count
            continue
        entropies, similarity = rows.pool_entropy, rows.prototype_similarity
        results.append(
            Scores(
                probs=rows.probs[frames].max(axis=0),
                embedding=rows.embeddings[start],
                seconds=rows.seconds,
                pool_entropy=float(entropies[frames].max()) if entropies is not None else None,
                prototype_similarity=(
                    similarity[frames].min(axis=0) if similarity is not None else None
                ),
                head_scores=(
                    rows.head_scores[frames].max(axis=0) if rows.head_scores is not None else None
                ),
                heads=rows.heads,
                shadow=(
                    ShadowScores(shadow[0], shadow[1][frames].max(axis=0))
                    if shadow is not None
                    else None
                ),
            )
        )
        start += count
    return results


def _refusal(status: str, details: tuple[str, ...]) -> EventRejected:
    detail = next((d for d in details if d), "")
    try:
        code = ReasonCode(status)
    except ValueError:
        code = ReasonCode.INTERNAL_ERROR
        detail = f"Triton's preprocess step answered the unknown status {status!r}: {detail}"
    return ImageRejected(code, f"{detail} (decoded in Triton)")


def entropy(probs: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """Shannon entropy (nats) of each row of class probabilities."""
    clipped = np.clip(probs, 1e-12, 1.0)
    result: npt.NDArray[np.float32] = -(clipped * np.log(clipped)).sum(axis=-1)
    return result
