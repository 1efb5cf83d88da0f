"""``finetune.json`` and ``finetune.png``: held-out PR-AUC of each method with 95% intervals,
and the training losses."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

logger = logging.getLogger(__name__)

NAME = "finetune"
"""Stem of the report files: ``finetune.json`` and ``finetune.png``."""
SCHEMA = "modstream.finetune/1"


def write_json(report: dict[str, Any], out: Path, name: str = NAME) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.json"
    path.write_text(json.dumps({"schema": SCHEMA, **report}, indent=2) + "\n")
    return path


def plot(report: dict[str, Any], out: Path, name: str = NAME) -> Path:
    """Left: PR-AUC per category and macro, per method, with bootstrap 95% intervals.
    Right: training losses per epoch."""
    methods: dict[str, dict[str, dict[str, float | None]]] = report["results"]["methods"]
    keys = [*report["dataset"]["categories"], "macro"]
    figure, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    width = 0.8 / max(len(methods), 1)
    for offset, (method, values) in enumerate(methods.items()):
        xs = [i + (offset - (len(methods) - 1) / 2) * width for i in range(len(keys))]
        ys = [values[k]["value"] or 0.0 for k in keys]
        errors = [
            [max(y - (values[k]["low"] or y), 0.0) for y, k in zip(ys, keys, strict=True)],
            [max((values[k]["high"] or y) - y, 0.0) for y, k in zip(ys, keys, strict=True)],
        ]
        left.bar(xs, ys, width, yerr=errors, capsize=3, label=method)
    left.set_xticks(range(len(keys)), keys, rotation=15)
    left.set_ylim(0, 1.18)
    left.set_ylabel("held-out PR-AUC (95% bootstrap)")
    left.legend(loc="upper center", ncol=len(methods), fontsize=8)
    left.set_title(f"test split: {report['results']['test_images']} images (synthetic)")
    history = report["training"]
    epochs = range(1, len(history["bce"]) + 1)
    right.plot(epochs, history["bce"], marker="o", label="heads BCE")
    right.plot(epochs, history["distill"], marker="o", label="KL to original 5 classes")
    right.set_xlabel("epoch")
    right.set_yscale("log")
    right.set_title(f"training: last {report['backbone']['blocks']} block(s) + heads")
    right.legend(fontsize=8)
    figure.tight_layout()
    path = out / f"{name}.png"
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
