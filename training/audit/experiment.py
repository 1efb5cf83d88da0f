"""The audit itself: plant label flips, score every sample from the pool's out-of-fold
predictions, measure how well each score finds the flips, and test re-weighting by difficulty.

Multi-class formulation: each image's label is its one category, or ``none`` for a negative
(the demo set gives every image at most one label). The heads served in production are
one-vs-rest per category; a softmax over the categories plus ``none`` is the same question
asked as one distribution, which an entropy needs.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from training.audit.oof import Floats, Labels, fit_softmax, out_of_fold
from training.audit.reweight import reweighting
from training.audit.scores import SCORE_NAMES, PoolScores, precision_at_k, top_k
from training.heads.fit import FitConfig

logger = logging.getLogger(__name__)

NONE = "none"
TRAIN, TEST = "train", "test"
K_VALUES = (10, 25, 50, 100)


@dataclass(frozen=True)
class AuditSet:
    """Labelled images with one embedding matrix per backbone of the pool."""

    embeddings: dict[str, Floats]
    """Backbone name → ``[N, D_b]``; the first is the served backbone."""
    labels: Labels
    """``[N]`` class indexes into ``classes``."""
    classes: tuple[str, ...]
    splits: tuple[str, ...]
    groups: tuple[str, ...]
    references: tuple[str, ...]
    """What each image is called (the manifest's path), for the report and the page."""

    def mask(self, split: str) -> npt.NDArray[np.bool_]:
        return np.array([s == split for s in self.splits], dtype=bool)


def class_labels(
    labels: Sequence[frozenset[str]],
) -> tuple[tuple[str, ...], Labels, npt.NDArray[np.bool_]]:
    """Classes (categories sorted, then ``none``), each row's class, and which rows are
    single-label (rows with two labels have no one class and are left out of the audit)."""
    names = sorted({name for row in labels for name in row})
    classes = (*names, NONE)
    index = {name: i for i, name in enumerate(classes)}
    single = np.array([len(row) <= 1 for row in labels], dtype=bool)
    y = np.array(
        [index[next(iter(row))] if len(row) == 1 else index[NONE] for row in labels],
        dtype=np.int64,
    )
    return classes, y, single


def flip_labels(
    y: Labels, eligible: npt.NDArray[np.bool_], fraction: float, classes: int, seed: int
) -> tuple[Labels, npt.NDArray[np.bool_]]:
    """Give ``round(fraction x eligible)`` eligible rows, drawn with ``seed``, another class
    drawn uniformly; returns the new labels and which rows were flipped."""
    rng = np.random.default_rng(seed)
    candidates = np.nonzero(eligible)[0]
    count = round(fraction * len(candidates))
    chosen = rng.choice(candidates, size=count, replace=False)
    flipped = y.copy()
    # An offset of 1..C-1 lands on every other class with equal chance, never the same one.
    flipped[chosen] = (y[chosen] + rng.integers(1, classes, size=count)) % classes
    planted = np.zeros(len(y), dtype=bool)
    planted[chosen] = True
    return flipped, planted


def pool_out_of_fold(
    data: AuditSet, y: Labels, rows: npt.NDArray[np.bool_], cfg: FitConfig
) -> npt.NDArray[np.float64]:
    """Out-of-fold probabilities of each backbone's head on ``rows``: ``[M, rows, C]``."""
    groups = [g for g, keep in zip(data.groups, rows, strict=True) if keep]
    found = []
    for name, x in data.embeddings.items():
        started = time.perf_counter()
        found.append(out_of_fold(x[rows], y[rows], groups, len(data.classes), cfg))
        logger.info("out-of-fold heads on %s in %.1f s", name, time.perf_counter() - started)
    return np.stack(found)


@dataclass(frozen=True)
class AuditResult:
    report: dict[str, Any]
    """What goes into the JSON."""
    audited: npt.NDArray[np.int64]
    """Indexes into the set of the audited rows, in the order of ``scores``."""
    scores: PoolScores
    given: Labels
    """The labels the audit saw (with flips planted), for the audited rows."""
    planted: npt.NDArray[np.bool_]


def run_audit(
    data: AuditSet,
    *,
    flip: float,
    seed: int,
    cfg: FitConfig,
    draws: int,
    k_values: Sequence[int] = K_VALUES,
) -> AuditResult:
    """Score every audited row; with ``flip > 0`` also measure precision@k on planted flips
    (in the train split) and re-weighting against the clean test split.

    Raises ValueError when too few groups remain to hold any out.
    """
    train = data.mask(TRAIN)
    rows = train if flip > 0 else np.ones(len(data.labels), dtype=bool)
    given, planted = flip_labels(data.labels, rows, flip, len(data.classes), seed)
    started = time.perf_counter()
    probs = pool_out_of_fold(data, given, rows, cfg)
    scores = PoolScores.of(probs, given[rows])
    planted_rows = planted[rows]
    report: dict[str, Any] = {
        "audited_rows": int(rows.sum()),
        "audited_split": TRAIN if flip > 0 else "all",
        "flip_fraction": flip,
        "planted": int(planted.sum()),
        "out_of_fold_seconds": round(time.perf_counter() - started, 2),
        "per_model_accuracy_on_given_labels": {
            name: round(float(np.mean(p.argmax(axis=1) == given[rows])), 4)
            for name, p in zip(data.embeddings, probs, strict=True)
        },
    }
    if planted.any():
        report["chance"] = round(float(planted_rows.mean()), 4)
        report["precision_at_k"] = {
            name: {str(k): precision_at_k(scores.ranking(name), planted_rows, k) for k in k_values}
            for name in SCORE_NAMES
        }
        # Confident learning on each backbone alone: does the pool beat its best member?
        report["single_model_suspicion_precision_at_k"] = {
            name: {
                str(k): precision_at_k(1.0 - p[np.arange(len(p)), given[rows]], planted_rows, k)
                for k in k_values
            }
            for name, p in zip(data.embeddings, probs, strict=True)
        }
        report["precision_curve"] = {
            name: _precision_curve(scores.ranking(name), planted_rows) for name in SCORE_NAMES
        }
        test = data.mask(TEST)
        primary = next(iter(data.embeddings))
        report["reweighting"] = (
            reweighting(
                data.embeddings[primary],
                (data.labels, given),
                (train, test),
                scores,
                len(data.classes),
                cfg,
                draws=draws,
                seed=seed,
                fit=fit_softmax,
            )
            if test.any()
            else None
        )
        if report["reweighting"] is not None:
            report["reweighting"]["backbone"] = primary
    return AuditResult(
        report, np.nonzero(rows)[0].astype(np.int64), scores, given[rows], planted_rows
    )


def _precision_curve(score: npt.NDArray[np.float64], planted: npt.NDArray[np.bool_]) -> list[float]:
    """Precision at every k from 1 to all rows, for the plot."""
    hits = np.cumsum(planted[top_k(score, len(score))])
    return [round(float(v), 4) for v in hits / np.arange(1, len(score) + 1)]


def listing(data: AuditSet, result: AuditResult, top: int) -> list[dict[str, Any]]:
    """The ``top`` most suspicious labels (lowest self-confidence first), every score with
    each."""
    suspicion = result.scores.ranking("suspicion")
    found = []
    for rank, position in enumerate(top_k(suspicion, min(top, len(suspicion))), start=1):
        index = int(result.audited[position])
        s = result.scores
        found.append(
            {
                "rank": rank,
                "index": index,
                "image": data.references[index],
                "given": data.classes[int(result.given[position])],
                "original": data.classes[int(data.labels[index])],
                "planted_flip": bool(result.planted[position]),
                "suggested": data.classes[int(s.suggested[position])],
                "self_confidence": round(float(s.self_confidence[position]), 4),
                "confusion_perplexity": round(float(s.confusion_perplexity[position]), 4),
                "total_entropy": round(float(s.total_entropy[position]), 4),
                "disagreement": round(float(s.disagreement[position]), 4),
            }
        )
    return found
