"""Does difficulty help training? Heads fitted on the flipped train split under several
weightings, each measured on the clean (never flipped) test split.

Variants (weights come from the out-of-fold scores of the train split only):

* ``clean_labels``: the unflipped labels, uniform weights: the ceiling;
* ``uniform``: the flipped labels, uniform weights: the baseline;
* ``one_minus_difficulty``: weight ``1 - d``, ``d`` the confusion perplexity mapped to [0, 1];
* ``drop_difficult``: weight 0 for the most difficult ``DROP`` share, 1 otherwise;
* ``drop_suspicious``: weight 0 for the ``DROP`` share of lowest self-confidence (what
  confident learning does with the labels it suspects).

Accuracy gets a Wilson interval; macro PR-AUC (one-vs-rest average precision, averaged over
classes) and each variant's difference from ``uniform`` get a seeded percentile bootstrap over
test images, the same draws for every variant (a paired comparison).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from training.audit.scores import PoolScores, top_k
from training.heads.fit import FitConfig
from training.heads.metrics import Estimate, average_precision, proportion

Floats = npt.NDArray[np.float32]
Labels = npt.NDArray[np.int64]
Mask = npt.NDArray[np.bool_]
DROP = 0.1
BASELINE = "uniform"


class Predictor(Protocol):
    def predict(self, embeddings: Floats) -> npt.NDArray[np.float64]: ...


Fit = Callable[[Floats, Labels, int, FitConfig, "npt.NDArray[np.float64] | None"], Predictor]


def weightings(scores: PoolScores, classes: int) -> dict[str, npt.NDArray[np.float64]]:
    """Each variant's weight per audited (train) row."""
    n = len(scores.self_confidence)
    drop = max(1, round(DROP * n))
    hard = np.ones(n)
    hard[top_k(scores.confusion_perplexity, drop)] = 0.0
    suspect = np.ones(n)
    suspect[top_k(scores.ranking("suspicion"), drop)] = 0.0
    return {
        BASELINE: np.ones(n),
        "one_minus_difficulty": 1.0 - scores.difficulty(classes),
        "drop_difficult": hard,
        "drop_suspicious": suspect,
    }


def macro_pr_auc(y: Labels, probs: npt.NDArray[np.float64]) -> float | None:
    values = [
        average_precision(y == c, probs[:, c]) for c in range(probs.shape[1]) if (y == c).any()
    ]
    found = [v for v in values if v is not None]
    return float(np.mean(found)) if found else None


def reweighting(
    x: Floats,
    labels: tuple[Labels, Labels],
    splits: tuple[Mask, Mask],
    scores: PoolScores,
    classes: int,
    cfg: FitConfig,
    *,
    draws: int,
    seed: int,
    fit: Fit,
) -> dict[str, Any]:
    """Held-out accuracy and macro PR-AUC of each variant, with intervals and paired
    differences from ``uniform``. ``labels`` is (clean, flipped); ``splits`` (train, test)."""
    clean, flipped = labels
    train, test = splits
    x_train, x_test, y_test = x[train], x[test], clean[test]
    probs = {"clean_labels": fit(x_train, clean[train], classes, cfg, None).predict(x_test)}
    for name, weight in weightings(scores, classes).items():
        probs[name] = fit(x_train, flipped[train], classes, cfg, weight).predict(x_test)
    rng = np.random.default_rng(seed)
    samples = [rng.integers(0, len(y_test), len(y_test)) for _ in range(draws)]
    base_correct = probs[BASELINE].argmax(axis=1) == y_test
    base_auc = [macro_pr_auc(y_test[i], probs[BASELINE][i]) for i in samples]
    found: dict[str, Any] = {"drop_share": DROP, "test_rows": len(y_test), "variants": {}}
    for name, p in probs.items():
        correct = p.argmax(axis=1) == y_test
        auc = [macro_pr_auc(y_test[i], p[i]) for i in samples]
        gain_auc = [
            a - b for a, b in zip(auc, base_auc, strict=True) if a is not None and b is not None
        ]
        gain_acc = [float(np.mean(correct[i]) - np.mean(base_correct[i])) for i in samples]
        found["variants"][name] = {
            "accuracy": proportion(int(correct.sum()), len(correct)).as_json(),
            "macro_pr_auc": _interval(macro_pr_auc(y_test, p), [a for a in auc if a is not None]),
            "accuracy_minus_uniform": _interval(
                float(np.mean(correct) - np.mean(base_correct)), gain_acc
            ),
            "macro_pr_auc_minus_uniform": _interval(
                _difference(macro_pr_auc(y_test, p), macro_pr_auc(y_test, probs[BASELINE])),
                gain_auc,
            ),
        }
    return found


def _difference(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def _interval(value: float | None, draws: list[float]) -> dict[str, Any]:
    if value is None or not draws:
        return Estimate(value, None, None).as_json()
    low, high = np.percentile(draws, [2.5, 97.5])
    return Estimate(round(value, 4), round(float(low), 4), round(float(high), 4)).as_json()
