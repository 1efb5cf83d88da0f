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

import hashlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt
from tqdm import tqdm

from consumer.moderation.heads import HeadCategory
from training.heads.embed import TrainingFailed
from training.heads.fit import (
    LOGISTIC,
    Bools,
    FitConfig,
    Fitter,
    Floats,
    Head,
    Standardizer,
    fitters,
    one_torch_thread,
)
from training.heads.metrics import (
    BLOCK_PRECISION_TARGET,
    average_precision,
    best_f1_threshold,
    precision_threshold,
)
from training.heads.trained import TrainedHeads

logger = logging.getLogger(__name__)

TRAIN, TEST = "train", "test"


def hashed_fraction(key: str) -> float:
    """A number in [0, 1) fixed by ``key`` alone: the same on every machine and run, so a
    split drawn from it keeps every row on its side when rows are added."""
    digest = hashlib.sha256(key.encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


SELECTED = "selected"
"""Learning-curve series of whatever kind the cross-validation picks at that size."""
LEARNING_SIZES = (5, 10, 20, 50, 100)


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
