"""Held-out numbers for heads, each with a 95% interval.

How thresholds are chosen (both on the train split only, never on test images):

* review threshold: the score that maximises F1 on out-of-fold predictions of a grouped,
  stratified cross-validation of the train split (``best_f1_threshold``);
* block threshold: the lowest score whose out-of-fold precision reaches
  ``BLOCK_PRECISION_TARGET`` (``precision_threshold``), and never below the review threshold.
  When no score reaches the target the head gets no block threshold (None): it only sends
  images to review. (A threshold of 1.0 would not do: float32 sigmoids round to 1.0.)

Intervals: precision, recall and the false-positive rate on benign photos are proportions and
get Wilson score intervals; F1 and PR-AUC (average precision) are not, and get a seeded
percentile bootstrap over test images.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from consumer.moderation.shadow_report import wilson

"""The normal quantile of a two-sided 95% interval."""
BLOCK_PRECISION_TARGET = 0.95
BOOTSTRAP_DRAWS = 1000

Scores = npt.NDArray[np.float32] | npt.NDArray[np.float64]
Labels = npt.NDArray[np.bool_]


@dataclass(frozen=True)
class Estimate:
    """A measured value with its 95% interval; ``k``/``n`` for proportions."""

    value: float | None
    low: float | None
    high: float | None
    k: int | None = None
    n: int | None = None

    def as_json(self) -> dict[str, Any]:
        found: dict[str, Any] = {"value": self.value, "low": self.low, "high": self.high}
        if self.n is not None:
            found.update(k=self.k, n=self.n)
        return found


def proportion(k: int, n: int) -> Estimate:
    interval = wilson(k, n)
    if interval is None:
        return Estimate(None, None, None, k=k, n=n)
    return Estimate(k / n, interval[0], interval[1], k=k, n=n)


def average_precision(labels: Labels, scores: Scores) -> float | None:
    """Area under the precision-recall curve as average precision (step-wise, no
    interpolation, tied scores taken together); None without positives."""
    positives = int(labels.sum())
    if positives == 0:
        return None
    precision, recall, _ = pr_curve(labels, scores)
    steps = np.diff(np.concatenate([[0.0], recall]))
    return float(np.sum(steps * precision))


def pr_curve(
    labels: Labels, scores: Scores
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Precision and recall when flagging ``score >= t``, for every distinct score ``t``,
    from the highest threshold down."""
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    sorted_scores = np.asarray(scores, dtype=np.float64)[order]
    hits = labels[order].astype(np.float64)
    # The last index of each run of tied scores: a threshold flags a whole run or none of it.
    last = np.r_[np.nonzero(np.diff(sorted_scores))[0], len(sorted_scores) - 1]
    tp = np.cumsum(hits)[last]
    flagged = last + 1.0
    positives = max(float(hits.sum()), 1.0)
    return tp / flagged, tp / positives, sorted_scores[last]


def counts(labels: Labels, scores: Scores, threshold: float) -> tuple[int, int, int]:
    """True positives, false positives and false negatives when flagging ``score >=
    threshold``."""
    flagged = np.asarray(scores, dtype=np.float64) >= threshold
    tp = int(np.sum(flagged & labels))
    return tp, int(np.sum(flagged & ~labels)), int(np.sum(~flagged & labels))


def f1_score(labels: Labels, scores: Scores, threshold: float) -> float:
    tp, fp, fn = counts(labels, scores, threshold)
    return 2 * tp / (2 * tp + fp + fn) if tp else 0.0


def best_f1_threshold(labels: Labels, scores: Scores) -> float:
    """The score threshold with the highest F1 (the highest such threshold on ties)."""
    precision, recall, thresholds = pr_curve(labels, scores)
    if not labels.any():
        # Nothing to find: flag only what scores as high as a score can.
        return 1.0
    total = precision + recall
    f1 = 2 * precision * recall / np.where(total > 0, total, 1.0)
    return float(thresholds[int(np.argmax(f1))])


def precision_threshold(labels: Labels, scores: Scores, target: float) -> float | None:
    """The lowest threshold whose precision is at least ``target``; None if none is."""
    precision, _, thresholds = pr_curve(labels, scores)
    reaching = np.nonzero(precision >= target)[0]
    if not labels.any() or len(reaching) == 0:
        return None
    return float(thresholds[reaching[-1]])


def bootstrap(
    statistic: Callable[[Labels, Scores], float | None],
    labels: Labels,
    scores: Scores,
    *,
    draws: int = BOOTSTRAP_DRAWS,
    seed: int = 0,
) -> tuple[float, float] | None:
    """Percentile 95% interval of ``statistic`` over test images drawn with replacement.

    Draws without a value (no positive drawn) are left out; None if every draw is.
    """
    rng = np.random.default_rng(seed)
    n = len(labels)
    values = []
    for _ in range(draws):
        index = rng.integers(0, n, n)
        value = statistic(labels[index], scores[index])
        if value is not None:
            values.append(value)
    if not values:
        return None
    low, high = np.percentile(values, [2.5, 97.5])
    return float(low), float(high)


def bootstrapped(
    statistic: Callable[[Labels, Scores], float | None],
    labels: Labels,
    scores: Scores,
    *,
    draws: int = BOOTSTRAP_DRAWS,
    seed: int = 0,
) -> Estimate:
    value = statistic(labels, scores)
    interval = bootstrap(statistic, labels, scores, draws=draws, seed=seed)
    if value is None or interval is None:
        return Estimate(value, None, None)
    return Estimate(value, interval[0], interval[1])


def at_threshold(
    labels: Labels, scores: Scores, threshold: float, *, draws: int, seed: int
) -> dict[str, Any]:
    """Precision and recall (Wilson) and F1 (bootstrap) when flagging ``score >= threshold``."""
    tp, fp, fn = counts(labels, scores, threshold)
    f1 = bootstrapped(
        lambda y, s: f1_score(y, s, threshold), labels, scores, draws=draws, seed=seed
    )
    return {
        "threshold": threshold,
        "precision": proportion(tp, tp + fp).as_json(),
        "recall": proportion(tp, tp + fn).as_json(),
        "f1": f1.as_json(),
    }


def evaluate(
    labels: Labels,
    scores: Scores,
    *,
    review_threshold: float,
    block_threshold: float | None,
    benign: npt.NDArray[np.bool_],
    draws: int = BOOTSTRAP_DRAWS,
    seed: int = 0,
) -> dict[str, Any]:
    """Every held-out number of one head on the test split.

    ``benign`` marks the test images that are plain photos with no label at all; the
    false-positive rate on them is measured at the block threshold. Without a block threshold
    (precision target not reached) the numbers at block are None.
    """
    found: dict[str, Any] = {
        "positives": int(labels.sum()),
        "negatives": int((~labels).sum()),
        "at_review": at_threshold(labels, scores, review_threshold, draws=draws, seed=seed),
        "at_block": None,
        "pr_auc": bootstrapped(average_precision, labels, scores, draws=draws, seed=seed).as_json(),
        "benign_fpr_at_block": None,
    }
    if block_threshold is not None:
        benign_negatives = benign & ~labels
        blocked = np.asarray(scores, dtype=np.float64) >= block_threshold
        false_blocks = int(np.sum(blocked & benign_negatives))
        found["at_block"] = at_threshold(labels, scores, block_threshold, draws=draws, seed=seed)
        found["benign_fpr_at_block"] = proportion(
            false_blocks, int(benign_negatives.sum())
        ).as_json()
    return found


def curve_points(labels: Labels, scores: Scores, max_points: int = 200) -> dict[str, list[float]]:
    """The PR curve thinned to at most ``max_points`` points, for plots and the report."""
    precision, recall, thresholds = pr_curve(labels, scores)
    keep = np.unique(np.linspace(0, len(recall) - 1, min(max_points, len(recall))).astype(int))
    return {
        "recall": [round(float(v), 5) for v in recall[keep]],
        "precision": [round(float(v), 5) for v in precision[keep]],
        "threshold": [round(float(v), 6) for v in thresholds[keep]],
    }
