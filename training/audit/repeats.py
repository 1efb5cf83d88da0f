"""The flip experiment again under other seeds (other flips, other folds), so one lucky
draw of flips cannot carry the conclusion. Only point values are kept: the intervals of a
single run are in the main report."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

from training.audit.experiment import K_VALUES, AuditSet, run_audit
from training.heads.fit import FitConfig

logger = logging.getLogger(__name__)


def repeat(data: AuditSet, seeds: Sequence[int], flip: float, folds: int) -> dict[str, Any]:
    """Per score and k, and per re-weighting variant, the values over ``seeds`` with their
    mean, min and max."""
    precision: dict[str, dict[str, list[float]]] = {}
    gains: dict[str, dict[str, list[float]]] = {}
    for seed in seeds:
        logger.info("repeat with seed %d", seed)
        # One bootstrap draw: the intervals are not kept, only the point values.
        report = run_audit(
            data, flip=flip, seed=seed, cfg=FitConfig(folds=folds, seed=seed), draws=1
        ).report
        for name, by_k in report["precision_at_k"].items():
            for k in K_VALUES:
                value = by_k[str(k)]["value"]
                if value is not None:
                    precision.setdefault(name, {}).setdefault(str(k), []).append(value)
        for name, variant in (report.get("reweighting") or {}).get("variants", {}).items():
            for metric in ("accuracy_minus_uniform", "macro_pr_auc_minus_uniform"):
                value = variant[metric]["value"]
                if value is not None:
                    gains.setdefault(name, {}).setdefault(metric, []).append(value)
    return {
        "seeds": list(seeds),
        "precision_at_k": {
            name: {k: _spread(values) for k, values in by_k.items()}
            for name, by_k in precision.items()
        },
        "reweighting": {
            name: {metric: _spread(values) for metric, values in by_metric.items()}
            for name, by_metric in gains.items()
        },
    }


def _spread(values: list[float]) -> dict[str, Any]:
    return {
        "mean": round(float(np.mean(values)), 4),
        "min": round(min(values), 4),
        "max": round(max(values), 4),
        "values": [round(v, 4) for v in values],
    }
