"""The three kinds of head and how each is fitted (full-batch L-BFGS, fixed seeds)."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch

from training.heads.metrics import (
    average_precision,
)
from training.heads.trained import head_scores

logger = logging.getLogger(__name__)

LOGISTIC, PROTOTYPE, PULLED = "logistic", "prototype", "pulled"
KINDS = (LOGISTIC, PROTOTYPE, PULLED)

Floats = npt.NDArray[np.float32]
Bools = npt.NDArray[np.bool_]


@dataclass(frozen=True)
class FitConfig:
    """Fixed hyperparameters: chosen once, not tuned on test numbers."""

    l2: float = 1e-2
    """Ridge on the logistic weights (mean loss + l2/2 |w|²), standardised features."""
    pull: float = 3e-2
    """Ridge on the difference from the starting head, for ``pulled``."""
    calibration_l2: float = 1e-3
    """Keeps the prototype's calibration slope finite when the training labels separate."""
    max_iter: int = 200
    folds: int = 5
    seed: int = 0


@dataclass(frozen=True)
class Head:
    """One category's head in the served form."""

    kind: str
    weight: Floats
    """[D]."""
    bias: float
    normalize: bool
    init: str | None = None
    """For ``pulled``: the head it started from."""

    def scores(self, embeddings: Floats) -> Floats:
        # exp overflows to inf for very negative logits, and 1 / (1 + inf) is the right 0.
        with np.errstate(over="ignore"):
            result: Floats = head_scores(
                embeddings,
                self.weight[:, None],
                np.array([self.bias], dtype=np.float32),
                np.array([self.normalize]),
            )[:, 0]
        return result


@dataclass(frozen=True)
class Standardizer:
    """Per-feature centring and scaling, folded into the head's weights when it is built."""

    mean: npt.NDArray[np.float64]
    scale: npt.NDArray[np.float64]

    @classmethod
    def fit(cls, embeddings: Floats) -> Standardizer:
        x = embeddings.astype(np.float64)
        std = x.std(axis=0)
        # Scales are floored at the median: dividing by the tiny spread of a nearly dead
        # feature (some vary by 1e-4 on the demo set) let the ridge ignore it and gave raw
        # weights over 1000 that one unusual image could swing by hundreds of logits; with the
        # floor they stay under about 10 at the same cross-validated PR-AUC.
        floor = max(float(np.median(std)), 1e-6)
        return cls(mean=x.mean(axis=0), scale=np.maximum(std, floor))

    def apply(self, embeddings: Floats) -> npt.NDArray[np.float64]:
        result: npt.NDArray[np.float64] = (embeddings.astype(np.float64) - self.mean) / self.scale
        return result

    def fold(self, weight: npt.NDArray[np.float64], bias: float) -> tuple[Floats, float]:
        """Weights on standardised features → weights on the raw embedding."""
        raw = weight / self.scale
        return raw.astype(np.float32), float(bias - raw @ self.mean)

    def unfold(self, head: Head) -> tuple[npt.NDArray[np.float64], float]:
        """A raw linear head → weights on standardised features."""
        if head.normalize:
            raise ValueError("only linear heads can be unfolded")
        weight = head.weight.astype(np.float64)
        return weight * self.scale, float(head.bias + weight @ self.mean)


@contextlib.contextmanager
def one_torch_thread() -> Iterator[None]:
    """Fits here are small full-batch problems (at most a few thousand rows): a second torch
    thread saves nothing, and on a busy 2-core machine its synchronisation made fits 20x
    slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# ── fitting ───────────────────────────────────────────────────────────────────────────────


def _logistic(
    features: npt.NDArray[np.float64],
    labels: Bools,
    *,
    start: tuple[npt.NDArray[np.float64], float],
    centre: npt.NDArray[np.float64],
    ridge: float,
    max_iter: int,
) -> tuple[npt.NDArray[np.float64], float]:
    """argmin mean BCE + ridge/2 |w - centre|² (bias free), by L-BFGS from ``start``."""
    x = torch.from_numpy(features)
    y = torch.from_numpy(labels.astype(np.float64))
    c = torch.from_numpy(centre)
    w = torch.tensor(start[0], dtype=torch.float64, requires_grad=True)
    b = torch.tensor([start[1]], dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS(
        [w, b], max_iter=max_iter, line_search_fn="strong_wolfe", tolerance_grad=1e-6
    )

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(x @ w + b, y)
        loss = loss + ridge / 2 * torch.sum((w - c) ** 2)
        loss.backward()  # type: ignore[no-untyped-call]
        return loss

    optimizer.step(closure)  # type: ignore[no-untyped-call]
    return w.detach().numpy().copy(), float(b.detach()[0])


def _prior_bias(labels: Bools) -> float:
    rate = (labels.sum() + 0.5) / (len(labels) + 1.0)
    return float(np.log(rate / (1 - rate)))


def fit_logistic(x: Floats, y: Bools, std: Standardizer, cfg: FitConfig) -> Head:
    z = std.apply(x)
    zero = np.zeros(z.shape[1])
    w, b = _logistic(
        z, y, start=(zero, _prior_bias(y)), centre=zero, ridge=cfg.l2, max_iter=cfg.max_iter
    )
    weight, bias = std.fold(w, b)
    return Head(LOGISTIC, weight, bias, normalize=False)


def fit_prototype(x: Floats, y: Bools, cfg: FitConfig) -> Head:
    unit = x.astype(np.float64) / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    prototype = unit[y].mean(axis=0)
    prototype /= max(float(np.linalg.norm(prototype)), 1e-12)
    cosine = (unit @ prototype)[:, None]
    (slope,), intercept = _logistic(
        cosine,
        y,
        start=(np.ones(1), _prior_bias(y)),
        centre=np.zeros(1),
        ridge=cfg.calibration_l2,
        max_iter=cfg.max_iter,
    )
    return Head(PROTOTYPE, (slope * prototype).astype(np.float32), intercept, normalize=True)


def fit_pulled(
    x: Floats,
    y: Bools,
    std: Standardizer,
    cfg: FitConfig,
    platform: dict[str, Head],
) -> Head:
    """Start from the platform head that ranks these labels best, pulled towards it."""
    name, start = related_head(x, y, platform)
    if start is None:
        start = fit_logistic(x, y, std, cfg)
        name = f"{LOGISTIC} on the same labels"
    w0, b0 = std.unfold(start)
    w, b = _logistic(
        std.apply(x), y, start=(w0, b0), centre=w0, ridge=cfg.pull, max_iter=cfg.max_iter
    )
    weight, bias = std.fold(w, b)
    return Head(PULLED, weight, bias, normalize=False, init=name)


def related_head(x: Floats, y: Bools, platform: dict[str, Head]) -> tuple[str, Head | None]:
    """The linear platform head whose scores best rank ``y`` (by average precision)."""
    best: tuple[float, str, Head | None] = (-1.0, "", None)
    for name, head in sorted(platform.items()):
        if head.normalize:
            continue
        ap = average_precision(y, head.scores(x))
        if ap is not None and ap > best[0]:
            best = (ap, name, head)
    return best[1], best[2]


Fitter = Callable[[Floats, Bools], Head]


def fitters(std: Standardizer, cfg: FitConfig, platform: dict[str, Head]) -> dict[str, Fitter]:
    return {
        LOGISTIC: lambda x, y: fit_logistic(x, y, std, cfg),
        PROTOTYPE: lambda x, y: fit_prototype(x, y, cfg),
        PULLED: lambda x, y: fit_pulled(x, y, std, cfg, platform),
    }


# ── cross-validation and selection ────────────────────────────────────────────────────────
