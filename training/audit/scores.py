"""Per-sample scores from the pool's out-of-fold class probabilities.

``probs`` is ``[M, N, C]``: M backbones, N samples, C classes, each row a distribution.

* ``confusion``: the mean over models of each model's own entropy, ``mean_m H(p_m)`` (nats).
* ``confusion_perplexity``: ``exp(confusion)``, in ``[1, C]``. It reads as the number of
  classes a typical pool member hesitates between: 1 when every model is sure, C when every
  model is uniform. It is chosen over the raw mean entropy because a count of classes means
  the same thing to a reviewer whatever the logarithm's base, and over entropy normalised by
  ``log C`` because it stays interpretable when categories are added; it is a monotone map of
  the mean entropy, so every ranking (precision@k, the audit list) is the same either way.
* ``total``: the entropy of the pool's mean prediction, ``H(mean_m p_m)``.
* ``disagreement``: ``total - confusion`` (>= 0 by concavity of entropy): the mutual
  information between the prediction and the choice of model. It is high when models are each
  sure but of different classes, low when they agree (sure or not).
* ``self_confidence``: the pool's mean probability of the *given* label, the confident-learning
  baseline (Northcutt et al.); ``1 - self_confidence`` is its suspicion score.

The entropy scores never see the given label: they measure how hard an image is, not whether
its label is wrong. Only ``self_confidence`` compares the prediction with the label.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from training.heads.metrics import proportion

Probs = npt.NDArray[np.float64]
Vector = npt.NDArray[np.float64]

SCORE_NAMES = ("confusion_perplexity", "total_entropy", "disagreement", "suspicion")
"""Each one ranks samples, highest first; ``suspicion`` is ``1 - self_confidence``."""
_TINY = 1e-12


def entropy(probs: Probs) -> Vector:
    """Shannon entropy in nats along the last axis (0 log 0 taken as 0)."""
    clipped = np.clip(probs, _TINY, 1.0)
    result: Vector = -np.sum(np.where(probs > 0, probs * np.log(clipped), 0.0), axis=-1)
    return result


@dataclass(frozen=True)
class PoolScores:
    """Every per-sample score of one audit, ``[N]`` each."""

    confusion: Vector
    confusion_perplexity: Vector
    total_entropy: Vector
    disagreement: Vector
    self_confidence: Vector
    suggested: npt.NDArray[np.int64]
    """The pool mean's most likely class."""

    @classmethod
    def of(cls, probs: Probs, given: npt.NDArray[np.int64]) -> PoolScores:
        """Scores of ``probs`` ``[M, N, C]`` against the given labels ``[N]``.

        Raises ValueError when the shapes disagree.
        """
        if probs.ndim != 3 or probs.shape[1] != len(given):
            raise ValueError(f"probs {probs.shape} do not match {len(given)} labels")
        confusion = entropy(probs).mean(axis=0)
        mean = probs.mean(axis=0)
        total = entropy(mean)
        return cls(
            confusion=confusion,
            confusion_perplexity=np.exp(confusion),
            total_entropy=total,
            # Float rounding can leave a hair below zero when all models agree exactly.
            disagreement=np.maximum(total - confusion, 0.0),
            self_confidence=mean[np.arange(len(given)), given],
            suggested=np.argmax(mean, axis=1).astype(np.int64),
        )

    def ranking(self, name: str) -> Vector:
        """The score called ``name`` in SCORE_NAMES, higher meaning more suspect."""
        if name == "suspicion":
            return 1.0 - self.self_confidence
        if name not in SCORE_NAMES:
            raise ValueError(f"unknown score {name!r} (one of {', '.join(SCORE_NAMES)})")
        found: Vector = getattr(self, name)
        return found

    def difficulty(self, classes: int) -> Vector:
        """Confusion perplexity mapped to ``[0, 1]``: 0 all models sure, 1 all uniform."""
        result: Vector = (self.confusion_perplexity - 1.0) / max(classes - 1, 1)
        return np.clip(result, 0.0, 1.0)


def top_k(score: Vector, k: int) -> npt.NDArray[np.int64]:
    """The ``k`` highest-scoring indexes; ties broken by index so a run is reproducible."""
    order: npt.NDArray[np.int64] = np.lexsort((np.arange(len(score)), -score)).astype(np.int64)
    return order[:k]


def precision_at_k(score: Vector, planted: npt.NDArray[np.bool_], k: int) -> dict[str, Any]:
    """Share of planted flips among the ``k`` top-scored samples, with its Wilson interval."""
    k = min(k, len(score))
    hits = int(planted[top_k(score, k)].sum())
    return proportion(hits, k).as_json()
