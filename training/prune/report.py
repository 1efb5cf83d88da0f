"""``pruning.json`` and ``pruning.png``: speed-up against action flips, one point per ratio."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

TARGET_SPEEDUP = 1.5
TARGET_FLIP_PERCENT = 1.0


def write_json(path: Path, report: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")


def plot(path: Path, rows: list[dict[str, Any]]) -> None:
    """Speed-up at batch 1 and 32 against default-policy flips with their Wilson interval."""
    figure, axes = plt.subplots(figsize=(6.4, 4.2))
    for batch, marker in (("1", "o"), ("32", "s")):
        for row in rows:
            flips = row["held_out"]["action_flips"]["default"]
            low, high = flips["flip_percent_wilson95"]
            x = flips["flip_percent"]
            y = row["speedup"][batch]
            axes.errorbar(
                x, y, xerr=[[x - low], [high - x]], fmt=marker, capsize=3, color=_colour(row)
            )
            axes.annotate(
                f"{row['ratio']:.0%} b{batch}", (x, y), textcoords="offset points", xytext=(6, 4)
            )
    axes.axhline(TARGET_SPEEDUP, linestyle="--", color="grey", linewidth=1)
    axes.axvline(TARGET_FLIP_PERCENT, linestyle="--", color="grey", linewidth=1)
    axes.set_xlabel("action flips under the default policy, % of held-out (95% Wilson)")
    axes.set_ylabel("onnxruntime images/s, pruned / unpruned")
    axes.set_title("Filter pruning: speed-up vs agreement (o batch 1, ■ batch 32)")
    axes.set_xlim(left=0)
    axes.set_ylim(bottom=1.0)
    axes.grid(alpha=0.3)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)


def _colour(row: dict[str, Any]) -> str:
    return "tab:blue" if row["ratio"] < 0.3 else "tab:red"
