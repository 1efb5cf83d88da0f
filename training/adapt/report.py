"""The adaptation report: ``adaptation.json`` and ``adaptation.png`` (probe with intervals)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

STAGES = (("before", "unadapted"), ("step_a", "A: BN re-estimated"), ("step_b", "B: A + SimCLR"))


def write_json(path: Path, report: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")


def plot(path: Path, report: dict[str, Any]) -> None:
    """Macro PR-AUC and accuracy of the probe per stage, each with its 95% interval."""
    probe = report["probe"]
    stages = [(key, label) for key, label in STAGES if key in probe]
    figure, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    for axis, metric, title in zip(
        axes,
        ("macro_pr_auc", "accuracy"),
        ("macro PR-AUC (bootstrap)", "accuracy (Wilson)"),
        strict=True,
    ):
        values = [probe[key][metric] for key, _ in stages]
        centre = [v["value"] for v in values]
        errors = [
            [c - v["low"] for c, v in zip(centre, values, strict=True)],
            [v["high"] - c for c, v in zip(centre, values, strict=True)],
        ]
        axis.errorbar(range(len(stages)), centre, yerr=errors, fmt="o", capsize=6)
        axis.set_xticks(range(len(stages)), [label for _, label in stages], fontsize=8)
        axis.set_title(f"linear probe, held-out: {title}", fontsize=9)
        axis.grid(axis="y", alpha=0.3)
    decision = report["decision"]
    figure.suptitle(
        f"{'accepted' if decision['accepted'] else 'rejected'}: {decision['why']}", fontsize=8
    )
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
