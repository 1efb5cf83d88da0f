"""Multi-class heads on one backbone's embeddings, and their out-of-fold predictions.

A head here is multinomial logistic regression (softmax over the categories and ``none``) on
the standardised embedding, L2-regularised as the served heads are (``FitConfig.l2``), fitted
full-batch by L-BFGS. The served heads are one-vs-rest sigmoids; the audit needs one
distribution per image to take its entropy, and a softmax over the same linear features is
the closest such model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch

from training.heads.fit import FitConfig, Standardizer, one_torch_thread

Floats = npt.NDArray[np.float32]
Labels = npt.NDArray[np.int64]
Probs = npt.NDArray[np.float64]


@dataclass(frozen=True)
class SoftmaxHead:
    standardizer: Standardizer
    weight: npt.NDArray[np.float64]
    """[D, C] on standardised features."""
    bias: npt.NDArray[np.float64]

    def predict(self, embeddings: Floats) -> Probs:
        logits = self.standardizer.apply(embeddings) @ self.weight + self.bias
        logits -= logits.max(axis=1, keepdims=True)
        exp = np.exp(logits)
        result: Probs = exp / exp.sum(axis=1, keepdims=True)
        return result


def fit_softmax(
    x: Floats,
    y: Labels,
    classes: int,
    cfg: FitConfig,
    weights: npt.NDArray[np.float64] | None = None,
) -> SoftmaxHead:
    """argmin weighted mean cross-entropy + l2/2 |W|² by L-BFGS from zero (deterministic).

    ``weights`` (one per row, default 1) re-weight each row's loss; they are rescaled to mean 1
    so the ridge means the same whatever the weighting.
    """
    std = Standardizer.fit(x)
    features = torch.from_numpy(std.apply(x))
    target = torch.from_numpy(y)
    w_row = np.ones(len(y)) if weights is None else np.asarray(weights, dtype=np.float64)
    w_row = w_row / max(float(w_row.mean()), 1e-12)
    row_weight = torch.from_numpy(w_row)
    weight = torch.zeros((x.shape[1], classes), dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(classes, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS(
        [weight, bias], max_iter=cfg.max_iter, line_search_fn="strong_wolfe", tolerance_grad=1e-6
    )

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        losses = torch.nn.functional.cross_entropy(
            features @ weight + bias, target, reduction="none"
        )
        loss = torch.mean(losses * row_weight) + cfg.l2 / 2 * torch.sum(weight**2)
        loss.backward()  # type: ignore[no-untyped-call]
        return loss

    with one_torch_thread():
        optimizer.step(closure)  # type: ignore[no-untyped-call]
    return SoftmaxHead(std, weight.detach().numpy().copy(), bias.detach().numpy().copy())


def grouped_class_folds(
    y: Labels, groups: Sequence[str], k: int, seed: int
) -> list[npt.NDArray[np.int64]]:
    """Up to ``k`` folds (the indexes each holds out) that keep every group together.

    Groups go, in a seeded order, largest first, to the fold holding the fewest rows so far,
    so folds come out of similar size. Fewer than two groups: no folds.
    """
    names = sorted(set(groups))
    k = min(k, len(names))
    if k < 2:
        return []
    index_of = {name: i for i, name in enumerate(names)}
    group_index = np.array([index_of[g] for g in groups], dtype=np.int64)
    sizes = np.bincount(group_index, minlength=len(names))
    order = np.random.default_rng(seed).permutation(len(names))
    order = order[np.argsort(-sizes[order], kind="stable")]
    load = np.zeros(k)
    fold_of = np.zeros(len(names), dtype=np.int64)
    for group in order:
        fold = int(np.argmin(load))
        fold_of[group] = fold
        load[fold] += sizes[group]
    assigned = fold_of[group_index]
    return [np.nonzero(assigned == fold)[0].astype(np.int64) for fold in range(k)]


def out_of_fold(
    x: Floats,
    y: Labels,
    groups: Sequence[str],
    classes: int,
    cfg: FitConfig,
) -> Probs:
    """Each row's class probabilities from a head that never saw its group, ``[N, C]``.

    Raises ValueError when the rows form fewer than two groups (nothing can be held out).
    """
    folds = grouped_class_folds(y, groups, cfg.folds, cfg.seed)
    if not folds:
        raise ValueError("out-of-fold predictions need at least two groups of images")
    probs = np.zeros((len(y), classes))
    for held in folds:
        keep = np.ones(len(y), dtype=bool)
        keep[held] = False
        probs[held] = fit_softmax(x[keep], y[keep], classes, cfg).predict(x[held])
    return probs
