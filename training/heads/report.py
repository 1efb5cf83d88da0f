"""The heads report: ``heads.json``, two plots, and the generated block of the model card.

``heads.json`` is the single source: the plots and the model-card block are drawn from it
alone (``python -m training.heads report`` redraws them without retraining), so the card never
holds a hand-copied number. Keys (``REPORT_KEYS``):

* ``schema``, ``generated_at``, ``seed``;
* ``backbone``: Triton name, file, sha256, input size, embedding size;
* ``dataset``: where it came from, images per split, refused images, held-out factors, and per
  category its owner and positives per split;
* ``method``: how heads are chosen, how thresholds are set, which intervals are used;
* ``categories``: per category the chosen head, the cross-validated PR-AUC of each kind, both
  thresholds, and on the test split precision, recall, F1, PR-AUC and the false-positive rate
  on benign photos, each with its 95% interval, plus the PR curve;
* ``learning_curves``: test PR-AUC per kind and labels per class, each seeded draw;
* ``timings``: embedding seconds per image, training seconds, and the tenant-head training
  benchmark (3 categories x 100 labels) against its 60 s target.
"""

from __future__ import annotations

import json
import math
import re
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

# No display: the plots are files, drawn in CI and on servers alike.
matplotlib.use("Agg")
import matplotlib.pyplot as plt

from training.heads.embed import TrainingFailed

SCHEMA = "modstream.heads.report/1"
REPORT_KEYS = (
    "schema",
    "generated_at",
    "seed",
    "backbone",
    "dataset",
    "method",
    "categories",
    "learning_curves",
    "timings",
)
JSON_NAME = "heads.json"
PR_PLOT = "heads_pr.png"
LEARNING_PLOT = "heads_learning.png"
CARD_BEGIN = "<!-- heads:begin -->"
CARD_END = "<!-- heads:end -->"
TENANT_TRAINING_TARGET_S = 60.0
"""Tenant heads for 3 categories x 100 labels, embeddings cached, on a 2-core machine."""
SYNTHETIC_NOTE = (
    "These categories are synthetic: they prove the machinery (labelled data, heads, serving, "
    "per-tenant visibility), not accuracy on real-world images, which needs real labelled data."
)
REAL_DATA_NOTE = (
    "Measured on the labelled set named above; numbers on another set, or on live traffic "
    "with other proportions, will differ."
)


def write_json(report: dict[str, Any], out_dir: Path) -> Path:
    missing = [key for key in REPORT_KEYS if key not in report]
    if missing:
        raise ValueError(f"report lacks {missing}")
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / JSON_NAME
    path.write_text(json.dumps(report, indent=2, sort_keys=False, allow_nan=False) + "\n")
    return path


def read_json(path: Path) -> dict[str, Any]:
    """Raises TrainingFailed when ``path`` is not a heads report."""
    try:
        report: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise TrainingFailed(f"{path}: cannot read a heads report: {exc}") from exc
    if not isinstance(report, dict) or report.get("schema") != SCHEMA:
        raise TrainingFailed(f"{path}: not a heads report (schema {SCHEMA})")
    return report


# ── plots ─────────────────────────────────────────────────────────────────────────────────


def plot_pr(report: dict[str, Any], path: Path) -> None:
    """Test PR curve of every category's chosen head."""
    figure, axes = plt.subplots(figsize=(6.4, 4.8), dpi=100)
    for name, entry in report["categories"].items():
        curve = entry["test"]["pr_curve"]
        ap = entry["test"]["pr_auc"]
        axes.step(
            [0.0, *curve["recall"]],
            [curve["precision"][0] if curve["precision"] else 1.0, *curve["precision"]],
            where="pre",
            label=f"{name} ({entry['head']}, PR-AUC {_value(ap)})",
        )
    axes.set_xlabel("recall")
    axes.set_ylabel("precision")
    axes.set_xlim(0, 1.01)
    axes.set_ylim(0, 1.01)
    axes.set_title("Heads on held-out test images")
    axes.grid(alpha=0.3)
    axes.legend(loc="lower left", fontsize="small")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    plt.close(figure)


def plot_learning(report: dict[str, Any], path: Path) -> None:
    """Test PR-AUC against labels per class: mean of the draws, shaded min to max."""
    curves = report["learning_curves"]["categories"]
    names = list(curves)
    figure, axes_row = plt.subplots(
        1, max(1, len(names)), figsize=(4.2 * max(1, len(names)), 3.8), dpi=100, squeeze=False
    )
    for axes, name in zip(axes_row[0], names, strict=False):
        for kind, points in curves[name].items():
            sizes = [p["labels_per_class"] for p in points]
            means = [p["mean"] for p in points]
            line = axes.plot(sizes, means, marker="o", label=kind)[0]
            axes.fill_between(
                sizes,
                [p["min"] for p in points],
                [p["max"] for p in points],
                color=line.get_color(),
                alpha=0.12,
            )
        axes.set_xscale("log")
        axes.set_xticks(report["learning_curves"]["labels_per_class"])
        axes.set_xticklabels([str(n) for n in report["learning_curves"]["labels_per_class"]])
        axes.set_xlabel("labels per class")
        axes.set_ylabel("test PR-AUC")
        axes.set_ylim(0, 1.01)
        axes.set_title(name)
        axes.grid(alpha=0.3)
    if names:
        axes_row[0][0].legend(loc="lower right", fontsize="small")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    plt.close(figure)


# ── the model card ────────────────────────────────────────────────────────────────────────


def _value(estimate: dict[str, Any] | None, digits: int = 3) -> str:
    if not estimate or estimate.get("value") is None:
        return "n/a"
    return f"{estimate['value']:.{digits}f}"


def with_interval(estimate: dict[str, Any] | None) -> str:
    if not estimate or estimate.get("value") is None:
        return "n/a"
    text = f"{estimate['value']:.3f}"
    if estimate.get("low") is not None and estimate.get("high") is not None:
        text += f" [{estimate['low']:.3f}, {estimate['high']:.3f}]"
    if estimate.get("n") is not None:
        text += f" ({estimate['k']}/{estimate['n']})"
    return text


def card_block(report: dict[str, Any], json_path: str) -> str:
    """The model card's heads section, between (and including) its markers."""
    backbone = report["backbone"]
    dataset = report["dataset"]
    method = report["method"]
    images = dataset["images"]
    intro = (
        f"Backbone `{backbone['name']}` (sha256 `{backbone['sha256'][:12]}…`), data "
        f"`{dataset['name']}`: {images['train']} training and {images['test']} test images."
    )
    held_out = dataset.get("held_out_in_test")
    if held_out:
        parts = [f"{kind} {', '.join(values)}" for kind, values in held_out.items() if values]
        intro += " Only in the test split, never seen in training: " + "; ".join(parts) + "."
    lines = [
        CARD_BEGIN,
        "## Heads on this backbone",
        "",
        _wrap(
            f"Generated from `{json_path}` by `modstream train heads` (redrawn by `python -m "
            "training.heads report`); edit the code, not this section."
        ),
        "",
        _wrap(intro),
        "",
        "| category | owner | head | precision | recall | F1 | PR-AUC | recall at block | FPR on "
        "benign photos at block |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, entry in report["categories"].items():
        test = entry["test"]
        review = test["at_review"]
        fpr, block = test["benign_fpr_at_block"], test["at_block"]
        lines.append(
            f"| {name} | {entry['tenant'] or 'platform'} | {entry['head']} | "
            f"{with_interval(review['precision'])} | {with_interval(review['recall'])} | "
            f"{with_interval(review['f1'])} | {with_interval(test['pr_auc'])} | "
            f"{'no block threshold' if block is None else with_interval(block['recall'])} | "
            f"{'no block threshold' if fpr is None else with_interval(fpr)} |"
        )
    lines += [
        "",
        _wrap(
            f"{method['selection']} Precision, recall and F1 are at the review threshold, "
            f"{method['review_threshold']}. The false-positive rate on benign photos (the "
            f"{dataset.get('benign_photos_test', 'n/a')} plain photos of the test split) is at "
            f"the block threshold, {method['block_threshold']}. Brackets: 95% intervals "
            f"({method['intervals']}), then the counts."
        ),
    ]
    curves = report["learning_curves"]
    sizes = curves["labels_per_class"]
    lines += [
        "",
        _wrap(
            "Learning curves: test PR-AUC of the head the cross-validation picks when a "
            f"tenant has n labels per class, mean ± standard deviation over {curves['draws']} "
            f"seeded draws (every kind in `{LEARNING_PLOT}`, PR curves in `{PR_PLOT}`, beside "
            "the JSON)."
        ),
        "",
        "| category | " + " | ".join(f"n = {n}" for n in sizes) + " |",
        "|---|" + "---|" * len(sizes),
    ]
    for name, kinds in curves["categories"].items():
        by_size = {p["labels_per_class"]: p for p in kinds.get("selected", [])}
        cells = [
            f"{by_size[n]['mean']:.3f} ± {by_size[n]['std']:.3f}" if n in by_size else "n/a"
            for n in sizes
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    per_image = report["timings"]["embedding"].get("seconds_per_image")
    speed = "n/a" if per_image is None else f"{per_image * 1000:.1f} ms"
    lines += [
        "",
        _wrap(
            f"Timings on this machine: embedding {speed} per image (decode and backbone); "
            f"{tenant_timing_sentence(report)}"
        ),
        "",
        _wrap(SYNTHETIC_NOTE if dataset.get("synthetic") else REAL_DATA_NOTE),
        CARD_END,
    ]
    return "\n".join(lines)


def _wrap(text: str) -> str:
    # The card is read as plain text too: keep its prose at the repository's line length.
    return textwrap.fill(text, width=100, break_on_hyphens=False, break_long_words=False)


def tenant_timing_sentence(report: dict[str, Any]) -> str:
    timing = report["timings"]["tenant_training"]
    asked = f"{timing['labels_per_class']} labels per class"
    if timing["met"] is None:
        return (
            f"tenant-head training time not measured: fewer than 3 categories have {asked} "
            "in the train split."
        )
    return (
        f"{len(timing['categories'])} tenant heads from {asked} trained in "
        f"{timing['seconds']:.1f} s once embeddings were cached (target "
        f"{timing['target_seconds']:.0f} s: {'met' if timing['met'] else 'missed'})."
    )


def update_model_card(card: Path, block: str) -> bool:
    """Put ``block`` between the heads markers of ``card`` (appending the markers at the end
    when absent), touching nothing else; returns whether the file changed.

    Raises TrainingFailed when the markers are unbalanced.
    """
    text = card.read_text() if card.is_file() else ""
    begins, ends = text.count(CARD_BEGIN), text.count(CARD_END)
    if begins != ends or begins > 1:
        raise TrainingFailed(
            f"{card}: expected one {CARD_BEGIN} … {CARD_END} pair, found {begins} and {ends}"
        )
    if begins:
        pattern = re.compile(re.escape(CARD_BEGIN) + ".*?" + re.escape(CARD_END), re.DOTALL)
        updated = pattern.sub(lambda _: block, text, count=1)
    else:
        updated = text + ("" if text.endswith("\n") or not text else "\n")
        updated += ("\n" if text else "") + block + "\n"
    if updated == text:
        return False
    card.write_text(updated)
    return True


def write_all(report: dict[str, Any], out_dir: Path, card: Path | None, json_name: str) -> Path:
    """``heads.json``, both plots, and the model card block; returns the JSON's path."""
    path = write_json(report, out_dir)
    plot_pr(report, out_dir / PR_PLOT)
    plot_learning(report, out_dir / LEARNING_PLOT)
    if card is not None:
        update_model_card(card, card_block(report, json_name))
    return path


def curve_summary(values: Sequence[float]) -> dict[str, Any]:
    finite = [v for v in values if not math.isnan(v)]
    if not finite:
        return {"mean": None, "std": None, "min": None, "max": None, "values": []}
    mean = sum(finite) / len(finite)
    std = math.sqrt(sum((v - mean) ** 2 for v in finite) / len(finite))
    return {
        "mean": round(mean, 5),
        "std": round(std, 5),
        "min": round(min(finite), 5),
        "max": round(max(finite), 5),
        "values": [round(v, 5) for v in finite],
    }
