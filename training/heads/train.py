"""Heads from labelled embeddings: platform heads, and tenant heads chosen from three kinds.

Labels are taken as complete: a row is a negative for every category it does not carry, so the
unlabelled hard negatives and the other categories' images teach each head what it is not.

* Platform heads (categories whose rows have no tenant): one logistic output per category on
  the standardised embedding (multi-label: the outputs are independent sigmoids).
* Tenant heads: three kinds are fitted and the one with the best cross-validated PR-AUC on the
  train split wins (test images never take part in the choice):

  - ``logistic``: L2-regularised logistic regression on the standardised embedding;
  - ``prototype``: cosine to the mean unit embedding of the positives, turned into a
    probability by a 1-d logistic calibration on the training labels (a cosine head);
  - ``pulled``: logistic regression started from the platform head that best ranks the
    tenant's own training labels and pulled towards it by an L2 penalty on the difference,
    so a few labels adjust a head that already knows something (without a platform head it
    starts from, and is pulled towards, the logistic fit on the tenant's labels).

Every kind reduces to ``sigmoid(w · x + b)`` on the embedding or the unit embedding
(``TrainedHeads``). All fits are full-batch L-BFGS on convex losses with fixed seeds, so a run
is reproducible.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import numpy.typing as npt
import torch
from tqdm import tqdm

from consumer.moderation.heads import HeadCategory
from training.heads.embed import TrainingFailed
from training.heads.metrics import (
    BLOCK_PRECISION_TARGET,
    average_precision,
    best_f1_threshold,
    precision_threshold,
)
from training.heads.trained import TrainedHeads, head_scores

logger = logging.getLogger(__name__)

TRAIN, TEST = "train", "test"
LOGISTIC, PROTOTYPE, PULLED = "logistic", "prototype", "pulled"
KINDS = (LOGISTIC, PROTOTYPE, PULLED)
SELECTED = "selected"
"""Learning-curve series of whatever kind the cross-validation picks at that size."""
LEARNING_SIZES = (5, 10, 20, 50, 100)

Floats = npt.NDArray[np.float32]
Bools = npt.NDArray[np.bool_]


class Row(Protocol):
    """A labelled image as ``training.heads.data`` loads it."""

    @property
    def image(self) -> bytes: ...
    @property
    def labels(self) -> frozenset[str]: ...
    @property
    def tenant(self) -> str | None: ...
    @property
    def split(self) -> str | None: ...
    @property
    def source(self) -> str: ...
    @property
    def group(self) -> str: ...


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
class EmbeddedRows:
    """Labelled rows with their embeddings; every row's split is ``train`` or ``test``."""

    embeddings: Floats
    labels: tuple[frozenset[str], ...]
    tenants: tuple[str | None, ...]
    splits: tuple[str, ...]
    sources: tuple[str, ...]
    groups: tuple[str, ...]

    def target(self, category: str) -> Bools:
        return np.array([category in labels for labels in self.labels], dtype=bool)

    def split(self, name: str) -> Bools:
        return np.array([split == name for split in self.splits], dtype=bool)


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


def grouped_folds(
    y: Bools, groups: Sequence[str], k: int, seed: int
) -> list[npt.NDArray[np.int64]]:
    """Up to ``k`` folds (the indexes each holds out) that keep every group together.

    Groups (e.g. one background photo) go, in a seeded order, largest share of positives
    first, to the fold with the smallest share of both classes so far, so every fold gets
    some of each where the groups allow. A fold whose remaining rows lack a class is dropped.
    """
    names = sorted(set(groups))
    k = min(k, len(names))
    if k < 2 or not y.any() or y.all():
        return []
    index_of = {name: i for i, name in enumerate(names)}
    group_index = np.array([index_of[g] for g in groups])
    positives = np.bincount(group_index, weights=y.astype(float), minlength=len(names))
    negatives = np.bincount(group_index, weights=(~y).astype(float), minlength=len(names))
    share = positives / positives.sum() + negatives / negatives.sum()
    order = np.random.default_rng(seed).permutation(len(names))
    order = order[np.argsort(-(positives / positives.sum())[order], kind="stable")]
    load = np.zeros(k)
    fold_of = np.zeros(len(names), dtype=int)
    for group in order:
        fold = int(np.argmin(load))
        fold_of[group] = fold
        load[fold] += share[group]
    assigned = fold_of[group_index]
    folds = []
    for fold in range(k):
        rest = y[assigned != fold]
        if rest.any() and not rest.all() and (assigned == fold).any():
            folds.append(np.nonzero(assigned == fold)[0].astype(np.int64))
    return folds if len(folds) >= 2 else []


@dataclass(frozen=True)
class Selection:
    kind: str
    cv_pr_auc: dict[str, float | None]
    folds: int
    out_of_fold: Floats
    """Out-of-fold scores of the chosen kind on the training rows (empty without folds)."""
    covered: Bools
    """Training rows that some fold held out (the others have no out-of-fold score)."""


def select(
    x: Floats,
    y: Bools,
    groups: Sequence[str],
    candidates: dict[str, Fitter],
    cfg: FitConfig,
) -> Selection:
    """The kind with the best out-of-fold PR-AUC on these (training) rows.

    Without two groups of each class there is nothing to cross-validate: the first candidate
    wins by default and ``folds`` is 0.
    """
    folds = grouped_folds(y, groups, cfg.folds, cfg.seed)
    if not folds:
        first = next(iter(candidates))
        none = np.zeros(0, dtype=np.float32)
        return Selection(first, dict.fromkeys(candidates), 0, none, np.zeros(0, dtype=bool))
    covered = np.zeros(len(y), dtype=bool)
    out_of_fold = {kind: np.zeros(len(y), dtype=np.float32) for kind in candidates}
    for held in folds:
        covered[held] = True
        keep = np.ones(len(y), dtype=bool)
        keep[held] = False
        for kind, fit in candidates.items():
            out_of_fold[kind][held] = fit(x[keep], y[keep]).scores(x[held])
    ap = {kind: average_precision(y[covered], s[covered]) for kind, s in out_of_fold.items()}
    # Ties go to the earlier kind: the simpler one comes first.
    kind = max(candidates, key=lambda name: _or_worst(ap[name]))
    return Selection(kind, ap, len(folds), out_of_fold[kind], covered)


def _or_worst(value: float | None) -> float:
    return -1.0 if value is None else value


@dataclass(frozen=True)
class CategoryHead:
    category: HeadCategory
    head: Head
    selection: Selection
    review_threshold: float
    block_threshold: float | None
    """None when no out-of-fold score reached the precision target: review only."""
    train_positives: int
    train_negatives: int


def train_category(
    category: HeadCategory,
    x: Floats,
    y: Bools,
    groups: Sequence[str],
    candidates: dict[str, Fitter],
    cfg: FitConfig,
) -> CategoryHead:
    """Choose the kind, fit it on every training row, and set thresholds from the
    out-of-fold scores (see ``training.heads.metrics``)."""
    if not y.any() or y.all():
        raise TrainingFailed(
            f"category {category.name!r} needs positive and negative training images "
            f"(has {int(y.sum())} of {len(y)} positive)"
        )
    selection = select(x, y, groups, candidates, cfg)
    head = candidates[selection.kind](x, y)
    # Without folds the only scores left are in-sample ones, which flatter the head.
    if selection.folds:
        seen, scores = y[selection.covered], selection.out_of_fold[selection.covered]
    else:
        seen, scores = y, head.scores(x)
    review = best_f1_threshold(seen, scores)
    block = precision_threshold(seen, scores, BLOCK_PRECISION_TARGET)
    return CategoryHead(
        category=category,
        head=head,
        selection=selection,
        review_threshold=review,
        block_threshold=None if block is None else max(block, review),
        train_positives=int(y.sum()),
        train_negatives=int((~y).sum()),
    )


# ── the whole set ─────────────────────────────────────────────────────────────────────────


def categories_of(
    labels: Sequence[frozenset[str]], tenants: Sequence[str | None]
) -> tuple[HeadCategory, ...]:
    """Every labelled category with its owner: platform heads first, then by tenant, by name.

    Raises TrainingFailed when one category is labelled for two owners.
    """
    owners: dict[str, set[str | None]] = {}
    for names, tenant in zip(labels, tenants, strict=True):
        for name in names:
            owners.setdefault(name, set()).add(tenant)
    found = []
    for name, tenant_set in owners.items():
        if len(tenant_set) != 1:
            who = ", ".join(sorted(t or "the platform" for t in tenant_set))
            raise TrainingFailed(
                f"category {name!r} is labelled for {who}; a head has one owner, so give each "
                "tenant's category its own name"
            )
        found.append(HeadCategory(name=name, tenant=next(iter(tenant_set))))
    return tuple(sorted(found, key=lambda c: (c.tenant is not None, c.tenant or "", c.name)))


@dataclass(frozen=True)
class Trained:
    heads: tuple[CategoryHead, ...]
    standardizer: Standardizer
    seconds: float

    def trained_heads(
        self, backbone: str, backbone_sha256: str, summary: dict[str, float] | None = None
    ) -> TrainedHeads:
        return TrainedHeads(
            categories=tuple(h.category for h in self.heads),
            weight=np.stack([h.head.weight for h in self.heads], axis=1).astype(np.float32),
            bias=np.array([h.head.bias for h in self.heads], dtype=np.float32),
            normalize=np.array([h.head.normalize for h in self.heads], dtype=bool),
            backbone=backbone,
            backbone_sha256=backbone_sha256,
            summary=dict(summary or {}),
        )

    def platform(self) -> dict[str, Head]:
        return {h.category.name: h.head for h in self.heads if h.category.tenant is None}


def train_all(data: EmbeddedRows, cfg: FitConfig, *, progress: bool = False) -> Trained:
    """Platform heads on every training row, then each tenant's heads with selection."""
    with one_torch_thread():
        return _train_all(data, cfg, progress)


def _train_all(data: EmbeddedRows, cfg: FitConfig, progress: bool) -> Trained:
    started = time.perf_counter()
    train = data.split(TRAIN)
    x = data.embeddings[train]
    groups = [g for g, keep in zip(data.groups, train, strict=True) if keep]
    std = Standardizer.fit(x)
    categories = categories_of(data.labels, data.tenants)
    heads: list[CategoryHead] = []
    platform: dict[str, Head] = {}
    for category in tqdm(categories, desc="heads", unit="head", disable=not progress):
        y = data.target(category.name)[train]
        if category.tenant is None:
            candidates = {LOGISTIC: fitters(std, cfg, {})[LOGISTIC]}
        else:
            candidates = fitters(std, cfg, platform)
        trained = train_category(category, x, y, groups, candidates, cfg)
        heads.append(trained)
        if category.tenant is None:
            platform[category.name] = trained.head
        logger.info(
            "%s (%s): %s head, cross-validated PR-AUC %s, review at %.3f, block at %s",
            category.name,
            category.tenant or "platform",
            trained.selection.kind,
            _rounded(trained.selection.cv_pr_auc),
            trained.review_threshold,
            "none" if trained.block_threshold is None else f"{trained.block_threshold:.3f}",
        )
    return Trained(tuple(heads), std, time.perf_counter() - started)


def _rounded(values: dict[str, float | None]) -> dict[str, float | None]:
    return {k: None if v is None else round(v, 3) for k, v in values.items()}


# ── learning curves and the training-time benchmark ───────────────────────────────────────


@dataclass(frozen=True)
class CurvePoint:
    labels_per_class: int
    kind: str
    pr_auc: tuple[float, ...]
    """Test PR-AUC of each seeded draw."""


@dataclass(frozen=True)
class LearningCurves:
    sizes: tuple[int, ...]
    draws: int
    points: dict[str, list[CurvePoint]] = field(default_factory=dict)
    """Category → points for every kind and size that had enough training positives."""


def draw_labels(y: Bools, n: int, rng: np.random.Generator) -> npt.NDArray[np.int64] | None:
    """``n`` positives and ``n`` negatives at random; None when either class has fewer."""
    positives, negatives = np.nonzero(y)[0], np.nonzero(~y)[0]
    if len(positives) < n or len(negatives) < n:
        return None
    picked = np.concatenate(
        [rng.choice(positives, n, replace=False), rng.choice(negatives, n, replace=False)]
    )
    return np.sort(picked).astype(np.int64)


def learning_curves(
    data: EmbeddedRows,
    trained: Trained,
    cfg: FitConfig,
    *,
    sizes: Sequence[int] = LEARNING_SIZES,
    draws: int = 5,
    progress: bool = False,
) -> LearningCurves:
    """Test PR-AUC of each kind (and of the cross-validated choice) trained on ``n`` labels
    per class, for several seeded draws from the train split.

    Pulled heads start from the final platform heads other than the category's own: the
    platform has its labels whatever the tenant labels.
    """
    with one_torch_thread():
        return _learning_curves(data, trained, cfg, sizes, draws, progress)


def _learning_curves(
    data: EmbeddedRows,
    trained: Trained,
    cfg: FitConfig,
    sizes: Sequence[int],
    draws: int,
    progress: bool,
) -> LearningCurves:
    train, test = data.split(TRAIN), data.split(TEST)
    x, x_test = data.embeddings[train], data.embeddings[test]
    groups = np.array(data.groups)[train]
    curves = LearningCurves(tuple(sizes), draws)
    platform = trained.platform()
    jobs = [(c, n) for c in categories_of(data.labels, data.tenants) for n in sizes]
    for index, (category, n) in enumerate(tqdm(jobs, desc="learning", disable=not progress)):
        y, y_test = data.target(category.name)[train], data.target(category.name)[test]
        others = {name: head for name, head in platform.items() if name != category.name}
        candidates = fitters(trained.standardizer, cfg, others)
        values: dict[str, list[float]] = {kind: [] for kind in (*KINDS, SELECTED)}
        for draw in range(draws):
            rng = np.random.default_rng([cfg.seed, index, draw])
            picked = draw_labels(y, n, rng)
            if picked is None:
                break
            sub_x, sub_y = x[picked], y[picked]
            choice = select(sub_x, sub_y, list(groups[picked]), candidates, cfg)
            for kind, fit in candidates.items():
                ap = average_precision(y_test, fit(sub_x, sub_y).scores(x_test))
                values[kind].append(np.nan if ap is None else ap)
            values[SELECTED].append(values[choice.kind][-1])
        curves.points.setdefault(category.name, []).extend(
            CurvePoint(n, kind, tuple(v)) for kind, v in values.items() if v
        )
    return curves


def time_tenant_training(
    data: EmbeddedRows,
    trained: Trained,
    cfg: FitConfig,
    *,
    categories: int = 3,
    labels_per_class: int = 100,
) -> tuple[float, list[str]]:
    """Seconds to train ``categories`` tenant heads (selection, final fit, thresholds) from
    ``labels_per_class`` labels each, once embeddings are cached; and which categories.

    Tenant categories come first; platform categories make up the number when a set has
    fewer tenant ones (the work per head is the same).
    """
    train = data.split(TRAIN)
    x = data.embeddings[train]
    groups = np.array(data.groups)[train]
    ordered = sorted(categories_of(data.labels, data.tenants), key=lambda c: c.tenant is None)
    platform = trained.platform()
    chosen: list[HeadCategory] = []
    jobs: list[tuple[HeadCategory, npt.NDArray[np.int64], Bools]] = []
    for category in ordered:
        y = data.target(category.name)[train]
        picked = draw_labels(y, labels_per_class, np.random.default_rng(cfg.seed))
        if picked is not None and len(chosen) < categories:
            chosen.append(category)
            jobs.append((category, picked, y))
    with one_torch_thread():
        started = time.perf_counter()
        for category, picked, y in jobs:
            others = {name: head for name, head in platform.items() if name != category.name}
            candidates = fitters(trained.standardizer, cfg, others)
            train_category(category, x[picked], y[picked], list(groups[picked]), candidates, cfg)
        return time.perf_counter() - started, [c.name for c in chosen]
