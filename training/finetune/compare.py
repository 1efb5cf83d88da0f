"""Held-out comparison of two sets of head scores on the same test images, and drift.

PR-AUC is average precision (``training.heads.metrics``). Intervals are seeded percentile
bootstraps over test images, as in the heads report; the difference between two methods is a
*paired* bootstrap: each draw resamples the test images once and scores both methods on that
same sample, so the interval reflects the methods' difference rather than the luck of the
sample. The macro PR-AUC is the mean over categories on each draw. A second, grouped version
resamples whole image groups (one background photo and its crops), for the correlation that
the grouped split leaves inside a group.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from training.heads.fit import FitConfig, Standardizer, fit_logistic, one_torch_thread
from training.heads.metrics import BOOTSTRAP_DRAWS, average_precision

Floats = npt.NDArray[np.float32]
Bools = npt.NDArray[np.bool_]


def baseline_heads(
    embeddings: Floats, labels: Bools, cfg: FitConfig
) -> tuple[Standardizer, Floats, Floats, Floats, Floats]:
    """The existing heads fit (logistic regression on standardised embeddings) per category.

    Returns the standardiser, the weights and biases on standardised features (``[D, K]``,
    ``[K]``, to start the joint heads from) and on the raw embedding (the served form).
    """
    std = Standardizer.fit(embeddings)
    raw_w, raw_b, std_w, std_b = [], [], [], []
    with one_torch_thread():
        for k in range(labels.shape[1]):
            head = fit_logistic(embeddings, labels[:, k], std, cfg)
            raw_w.append(head.weight)
            raw_b.append(head.bias)
            weight, bias = std.unfold(head)
            std_w.append(weight)
            std_b.append(bias)
    return (
        std,
        np.stack(std_w, axis=1).astype(np.float32),
        np.array(std_b, dtype=np.float32),
        np.stack(raw_w, axis=1).astype(np.float32),
        np.array(raw_b, dtype=np.float32),
    )


def linear_scores(embeddings: Floats, weight: Floats, bias: Floats) -> Floats:
    logits = embeddings.astype(np.float64) @ weight + bias
    result: Floats = np.exp(-np.logaddexp(0.0, -logits)).astype(np.float32)
    return result


def _aps(labels: Bools, scores: Floats) -> list[float | None]:
    return [average_precision(labels[:, k], scores[:, k]) for k in range(labels.shape[1])]


def _macro(values: Sequence[float | None]) -> float | None:
    if any(v is None for v in values):
        return None
    return float(np.mean([v for v in values if v is not None]))


def _values(values: Sequence[float | None]) -> list[float]:
    return [v for v in values if v is not None]


def _interval(values: list[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    low, high = np.percentile(values, [2.5, 97.5])
    return float(low), float(high)


def _draws(
    n: int, groups: Sequence[str] | None, draws: int, seed: int
) -> list[npt.NDArray[np.int64]]:
    """Resampled index sets: of images, or of whole groups when ``groups`` is given."""
    rng = np.random.default_rng(seed)
    if groups is None:
        return [rng.integers(0, n, n) for _ in range(draws)]
    names = sorted(set(groups))
    members = {name: [] for name in names}  # type: dict[str, list[int]]
    for index, group in enumerate(groups):
        members[group].append(index)
    result = []
    for _ in range(draws):
        chosen = rng.integers(0, len(names), len(names))
        result.append(np.array([i for c in chosen for i in members[names[c]]], dtype=np.int64))
    return result


def compare(
    categories: Sequence[str],
    labels: Bools,
    methods: dict[str, Floats],
    *,
    reference: str,
    groups: Sequence[str],
    draws: int = BOOTSTRAP_DRAWS,
    seed: int = 0,
) -> dict[str, Any]:
    """Per-category and macro PR-AUC of every method with 95% intervals, and paired
    intervals of each method's difference from ``reference`` (image- and group-level)."""
    samples = _draws(len(labels), None, draws, seed)
    grouped = _draws(len(labels), groups, draws, seed)
    found: dict[str, Any] = {"methods": {}, "differences": {}}
    per_draw: dict[str, list[list[float | None]]] = {}
    per_group_draw: dict[str, list[list[float | None]]] = {}
    for name, scores in methods.items():
        point = _aps(labels, scores)
        per_draw[name] = [_aps(labels[i], scores[i]) for i in samples]
        per_group_draw[name] = [_aps(labels[i], scores[i]) for i in grouped]
        entry: dict[str, Any] = {}
        for k, category in enumerate(categories):
            low, high = _interval(_values([d[k] for d in per_draw[name]]))
            entry[category] = {"value": point[k], "low": low, "high": high}
        low, high = _interval(_values([_macro(d) for d in per_draw[name]]))
        entry["macro"] = {"value": _macro(point), "low": low, "high": high}
        found["methods"][name] = entry
    for name in methods:
        if name == reference:
            continue
        found["differences"][f"{name} - {reference}"] = {
            "image_bootstrap": _difference(categories, per_draw[name], per_draw[reference]),
            "group_bootstrap": _difference(
                categories, per_group_draw[name], per_group_draw[reference]
            ),
            "value": {
                key: _minus(
                    found["methods"][name][key]["value"],
                    found["methods"][reference][key]["value"],
                )
                for key in [*categories, "macro"]
            },
        }
    found["draws"] = draws
    found["seed"] = seed
    found["test_images"] = len(labels)
    found["test_groups"] = len(set(groups))
    return found


def _minus(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def _difference(
    categories: Sequence[str],
    draws_a: list[list[float | None]],
    draws_b: list[list[float | None]],
) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for k, category in enumerate(categories):
        diffs = [
            a[k] - b[k]  # type: ignore[operator]
            for a, b in zip(draws_a, draws_b, strict=True)
            if a[k] is not None and b[k] is not None
        ]
        low, high = _interval(diffs)
        result[category] = {"low": low, "high": high}
    macros = [
        ma - mb
        for a, b in zip(draws_a, draws_b, strict=True)
        if (ma := _macro(a)) is not None and (mb := _macro(b)) is not None
    ]
    low, high = _interval(macros)
    result["macro"] = {"low": low, "high": high}
    return result


def drift(
    names: Sequence[str], before: Floats, after: Floats, class_names: Sequence[str]
) -> dict[str, Any]:
    """How far the five built-in class probabilities moved: max |Δprob| and top-class
    changes, overall and per image."""
    delta = np.abs(after.astype(np.float64) - before)
    top_before, top_after = before.argmax(axis=1), after.argmax(axis=1)
    changed = top_before != top_after
    return {
        "images": len(names),
        "max_abs_delta_prob": float(delta.max(initial=0.0)),
        "mean_abs_delta_prob": float(delta.mean()) if delta.size else 0.0,
        "top_class_changes": int(changed.sum()),
        "per_image": {
            name: {
                "max_abs_delta_prob": round(float(delta[i].max()), 6),
                "top_before": class_names[int(top_before[i])],
                "top_after": class_names[int(top_after[i])],
                # The original top class's probability, before and after: how near the
                # boundary an image sat when its top class changes.
                "top_prob_before": round(float(before[i, top_before[i]]), 6),
                "top_prob_after": round(float(after[i, top_before[i]]), 6),
            }
            for i, name in enumerate(names)
        },
    }
