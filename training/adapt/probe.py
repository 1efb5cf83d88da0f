"""The linear probe: multinomial logistic regression on embeddings, judged on held-out images.

Fitted on the train split only (standardised features, ridge 1e-2 as the heads use, L-BFGS),
scored on the test split: accuracy over the classes (Wilson interval) and macro PR-AUC over
the labelled categories, one-vs-rest on the probe's probabilities (percentile bootstrap over
test images). Before/after differences use a paired bootstrap: the same resampled test images
score both models, so the interval is of the difference itself.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from training.heads.fit import Standardizer, one_torch_thread
from training.heads.metrics import BOOTSTRAP_DRAWS, average_precision, proportion

RIDGE = 1e-2
MAX_ITER = 300

Floats = npt.NDArray[np.float32]
Ints = npt.NDArray[np.int64]


def fit_predict(train: Floats, labels: Ints, test: Floats, classes: int) -> npt.NDArray[np.float64]:
    """Class probabilities ``[n_test, classes]`` of a probe fitted on ``train``."""
    std = Standardizer.fit(train)
    x = torch.from_numpy(std.apply(train))
    y = torch.from_numpy(labels.astype(np.int64))
    with one_torch_thread():
        w = torch.zeros(x.shape[1], classes, dtype=torch.float64, requires_grad=True)
        b = torch.zeros(classes, dtype=torch.float64, requires_grad=True)
        optimizer = torch.optim.LBFGS(
            [w, b], max_iter=MAX_ITER, line_search_fn="strong_wolfe", tolerance_grad=1e-7
        )

        def closure() -> torch.Tensor:
            optimizer.zero_grad()
            loss = torch.nn.functional.cross_entropy(x @ w + b, y)
            loss = loss + RIDGE / 2 * torch.sum(w**2)
            loss.backward()  # type: ignore[no-untyped-call]
            return loss

        optimizer.step(closure)  # type: ignore[no-untyped-call]
        logits = torch.from_numpy(std.apply(test)) @ w.detach() + b.detach()
    result: npt.NDArray[np.float64] = torch.softmax(logits, dim=1).numpy()
    return result


def macro_pr_auc(labels: Ints, probs: npt.NDArray[np.float64], categories: int) -> float | None:
    """Mean average precision of the first ``categories`` classes, one-vs-rest."""
    values = [average_precision(labels == c, probs[:, c]) for c in range(categories)]
    found = [v for v in values if v is not None]
    return float(np.mean(found)) if found else None


def accuracy(labels: Ints, probs: npt.NDArray[np.float64]) -> float:
    return float(np.mean(probs.argmax(axis=1) == labels))


def _interval(values: list[float]) -> tuple[float, float]:
    low, high = np.percentile(values, [2.5, 97.5])
    return float(low), float(high)


def evaluate(
    labels: Ints, probs: npt.NDArray[np.float64], categories: int, *, seed: int = 0
) -> dict[str, Any]:
    """Accuracy (Wilson) and macro PR-AUC (bootstrap) on the test split."""
    rng = np.random.default_rng(seed)
    n = len(labels)
    draws = []
    for _ in range(BOOTSTRAP_DRAWS):
        index = rng.integers(0, n, n)
        value = macro_pr_auc(labels[index], probs[index], categories)
        if value is not None:
            draws.append(value)
    low, high = _interval(draws)
    correct = int(np.sum(probs.argmax(axis=1) == labels))
    return {
        "accuracy": proportion(correct, n).as_json(),
        "macro_pr_auc": {
            "value": macro_pr_auc(labels, probs, categories),
            "low": low,
            "high": high,
        },
    }


def paired_difference(
    labels: Ints,
    before: npt.NDArray[np.float64],
    after: npt.NDArray[np.float64],
    categories: int,
    *,
    seed: int = 0,
) -> dict[str, Any]:
    """after - before for macro PR-AUC and accuracy, each with a paired-bootstrap 95% interval."""
    rng = np.random.default_rng(seed)
    n = len(labels)
    auc, acc = [], []
    for _ in range(BOOTSTRAP_DRAWS):
        index = rng.integers(0, n, n)
        a = macro_pr_auc(labels[index], after[index], categories)
        b = macro_pr_auc(labels[index], before[index], categories)
        if a is not None and b is not None:
            auc.append(a - b)
        acc.append(accuracy(labels[index], after[index]) - accuracy(labels[index], before[index]))
    auc_now = macro_pr_auc(labels, after, categories)
    auc_then = macro_pr_auc(labels, before, categories)
    return {
        "macro_pr_auc": {
            "value": None if auc_now is None or auc_then is None else auc_now - auc_then,
            "low": _interval(auc)[0],
            "high": _interval(auc)[1],
        },
        "accuracy": {
            "value": accuracy(labels, after) - accuracy(labels, before),
            "low": _interval(acc)[0],
            "high": _interval(acc)[1],
        },
    }
