"""Drift of the frozen five-class head: the adapted model against the unadapted one.

Measured on the nsfwjs reference images (``tests/fixtures/nsfwjs/images/*_224.png``, the
images whose scores the import is pinned to) and the stand-ins (``bench/samples/standins``,
pushed to score bands around the shipped policy's thresholds): max |Δprob| over images and
classes, changes of the top class, and changes of the action any tenant of the policy file
would take.

The bound. A policy acts on a score crossing a threshold; the thresholds of one category in
``policies/default.yaml`` (default and every tenant) are at least ``gap`` apart (0.10 today:
0.30/0.40 and 0.70/0.80 for the explicit categories). A drift under ``gap / 2`` cannot carry
a score past two thresholds, and cannot move one across a threshold from further away than
half the way to the next: it stays within the resolution the policies themselves are
written at. Beyond that bound the adapted model would need its own thresholds. Within it, any
action change on these images is still counted and rejects the model.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
import yaml
from PIL import Image

from training.adapt.train import AdaptFailed
from training.nsfwjs.models import CATEGORIES, NsfwModel

Thresholds = dict[str, dict[str, float | None]]


@dataclass(frozen=True)
class DriftSet:
    names: tuple[str, ...]
    pixels: npt.NDArray[np.uint8]


def drift_images(reference: Path, standins: Path, size: int) -> DriftSet:
    """The reference images at ``size`` and the stand-ins; raises AdaptFailed if none."""
    paths = sorted(reference.glob(f"*_{size}.png")) + sorted(standins.glob("*.png"))
    if not paths:
        raise AdaptFailed(f"no drift images in {reference} or {standins}")
    pixels = []
    for path in paths:
        with Image.open(path) as image:
            rgb = image.convert("RGB")
        if rgb.size != (size, size):
            raise AdaptFailed(f"{path}: {rgb.size[0]}x{rgb.size[1]}, expected {size}x{size}")
        pixels.append(np.asarray(rgb, dtype=np.uint8))
    names = tuple(f"{p.parent.name}/{p.stem}" for p in paths)
    return DriftSet(names, np.stack(pixels))


def policy_thresholds(path: Path) -> dict[str, Thresholds]:
    """Per tenant (and ``default``): category -> {review, block}, tenant fields over default."""
    document = yaml.safe_load(path.read_text())
    default: Thresholds = document["default"]["thresholds"]
    found = {"default": default}
    for tenant, spec in (document.get("tenants") or {}).items():
        merged = {k: dict(v) for k, v in default.items()}
        for category, fields in (spec.get("thresholds") or {}).items():
            merged.setdefault(category, {}).update(fields)
        found[tenant] = merged
    return found


def threshold_gap(policies: dict[str, Thresholds]) -> float:
    """The smallest distance between two distinct thresholds of one category."""
    gaps = []
    for category in {c for t in policies.values() for c in t}:
        values = sorted(
            {v for t in policies.values() for v in t.get(category, {}).values() if v is not None}
        )
        gaps += [b - a for a, b in itertools.pairwise(values)]
    return float(min(gaps)) if gaps else 1.0


def action(scores: dict[str, float], thresholds: Thresholds) -> str:
    """block, review or allow: a score at or over a threshold triggers it; block wins."""
    hits = {
        level
        for category, levels in thresholds.items()
        for level, value in levels.items()
        if value is not None and scores.get(category, 0.0) >= value
    }
    return "block" if "block" in hits else "review" if "review" in hits else "allow"


def probs_of(model: NsfwModel, pixels: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
    with torch.no_grad():
        probs, _ = model.uint8_input()(torch.from_numpy(pixels.copy()))
    result: npt.NDArray[np.float32] = probs.numpy()
    return result


def measure(
    before: npt.NDArray[np.float32],
    after: npt.NDArray[np.float32],
    images: DriftSet,
    model: NsfwModel,
    policies: dict[str, Thresholds],
) -> dict[str, Any]:
    """Every drift number of one adapted model, with per-image detail."""
    categories = [CATEGORIES[name] for name in model.cfg.class_names]
    delta = np.abs(after.astype(np.float64) - before.astype(np.float64))
    per_image = []
    action_changes = []
    for i, name in enumerate(images.names):
        old = dict(zip(categories, map(float, before[i]), strict=True))
        new = dict(zip(categories, map(float, after[i]), strict=True))
        for tenant, thresholds in policies.items():
            was, now = action(old, thresholds), action(new, thresholds)
            if was != now:
                action_changes.append(f"{name} ({tenant}): {was} -> {now}")
        per_image.append(
            {
                "image": name,
                "max_abs_delta": round(float(delta[i].max()), 6),
                "top_before": categories[int(before[i].argmax())],
                "top_after": categories[int(after[i].argmax())],
            }
        )
    top_changes = [row["image"] for row in per_image if row["top_before"] != row["top_after"]]
    return {
        "images": len(images.names),
        "max_abs_delta": float(delta.max()),
        "mean_abs_delta": float(delta.mean()),
        "top_class_changes": top_changes,
        "action_changes": action_changes,
        "per_image": per_image,
    }


def within(found: dict[str, Any], bound: float) -> tuple[bool, str]:
    """Whether a drift measurement passes, and why not."""
    if found["max_abs_delta"] > bound:
        return False, f"max |Δprob| {found['max_abs_delta']:.3f} > bound {bound:.3f}"
    if found["top_class_changes"]:
        return False, f"top class changed on {', '.join(found['top_class_changes'])}"
    if found["action_changes"]:
        return False, f"policy action changed: {'; '.join(found['action_changes'][:3])}"
    return True, f"max |Δprob| {found['max_abs_delta']:.4f} <= bound {bound:.3f}, no changes"
