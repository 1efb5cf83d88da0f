"""Learning curves (test PR-AUC against labels per class) and the tenant-training timing."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
from tqdm import tqdm

from consumer.moderation.heads import HeadCategory
from training.heads.fit import KINDS, Bools, FitConfig, fitters, one_torch_thread
from training.heads.metrics import (
    average_precision,
)
from training.heads.train import (
    LEARNING_SIZES,
    SELECTED,
    TEST,
    TRAIN,
    EmbeddedRows,
    Trained,
    categories_of,
    select,
    train_category,
)

logger = logging.getLogger(__name__)


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
