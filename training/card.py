"""The model card's summary of the shared model's training steps, generated from their reports.

    python -m training.card [--results bench/results] [--card triton_repo/README.md]

Reads ``adaptation.json``, ``finetune.json``, ``audit.json`` and ``pruning.json`` (each written
by its step; a missing one is reported as not run) and rewrites the part of the card between
``<!-- training:begin -->`` and ``<!-- training:end -->``, so the card never says more than the
reports do. Exits 1 with one line when a report or the card cannot be read.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

BEGIN = "<!-- training:begin -->"
END = "<!-- training:end -->"

Report = dict[str, Any]


class CardError(Exception):
    """A report or the card cannot be read or written; the message says which."""


def _interval(value: dict[str, float], digits: int = 3) -> str:
    return f"{value['value']:+.{digits}f} [{value['low']:+.{digits}f}, {value['high']:+.{digits}f}]"


def _adaptation(report: Report) -> str:
    decision = report["decision"]
    step = decision.get("decides_on", "step_b")
    change = report["probe_change"][step]["macro_pr_auc"]
    drift = report["drift"][step]
    verdict = "accepted, exported" if decision["accepted"] else "rejected, not exported"
    return (
        f"| domain adaptation (BatchNorm + SimCLR) | linear-probe macro PR-AUC change "
        f"{_interval(change)}; five-class drift max \\|Δprob\\| {drift['max_abs_delta']:.3f} "
        f"(bound {report['drift_bound']['max_abs_delta']:.2f}) | {verdict} |"
    )


def _finetune(report: Report) -> str:
    methods = report["results"]["methods"]
    frozen, tuned = methods["frozen"]["macro"], methods["finetuned"]["macro"]
    difference = report["results"]["differences"]["finetuned - frozen"]["image_bootstrap"]
    drift = report["drift"]["reference_images"]
    decision = report["decision"]
    verdict = f"exported as `{decision['model']}`" if decision.get("exported") else "not exported"
    return (
        f"| fine-tuning the last {report['backbone']['blocks']} blocks with the heads | macro "
        f"PR-AUC {frozen['value']:.3f} → {tuned['value']:.3f}, paired Δ "
        f"[{difference['macro']['low']:+.3f}, {difference['macro']['high']:+.3f}]; drift max "
        f"\\|Δprob\\| {drift['max_abs_delta_prob']:.3f}, {drift['top_class_changes']} top-class "
        f"change(s) on {drift['images']} reference images | {verdict} |"
    )


def _audit(report: Report) -> str:
    at = report["precision_at_k"]
    # "suspicion" is 1 - self-confidence, the confident-learning baseline.
    confident = at["suspicion"]["50"]
    best_entropy = max(
        (scores["50"]["value"], name) for name, scores in at.items() if name != "suspicion"
    )
    variants = report["reweighting"]["variants"]
    dropped = variants.get("drop_suspicious", {}).get("macro_pr_auc_minus_uniform")
    reweighting = f"; dropping doubted labels {_interval(dropped)} PR-AUC" if dropped else ""
    return (
        f"| difficulty and label audit | planted flips (chance {report['chance']:.2f}): "
        f"precision@50 {confident['value']:.2f} [{confident['low']:.2f}, {confident['high']:.2f}]"
        f" by self-confidence, at most {best_entropy[0]:.2f} by an entropy score"
        f"{reweighting} | a review page, no model |"
    )


def _pruning(report: Report) -> str:
    rows = []
    for pruned in report["pruned"]:
        flips = pruned["held_out"]["action_flips"]["default"]
        low, high = flips["flip_percent_wilson95"]
        rows.append(
            f"{pruned['ratio']:.0%} of filters: {pruned['flops_ratio']:.2f}x the FLOPs, "
            f"{pruned['speedup']['32']:.2f}x images/s at batch 32 and "
            f"{pruned['speedup']['1']:.2f}x at batch 1, default-policy action flips "
            f"{flips['flip_percent']:.1f}% [{low:.1f}, {high:.1f}] on "
            f"{flips['images']} held-out images (`{pruned['triton_model']}`)"
        )
    return (
        "| structured pruning + distillation | "
        + "; ".join(rows)
        + " | exported as their own models; target ≥ 1.5x at ≤ 1% flips |"
    )


STEPS: dict[str, tuple[str, Callable[[Report], str]]] = {
    "adaptation.json": ("domain adaptation", _adaptation),
    "finetune.json": ("fine-tuning", _finetune),
    "audit.json": ("difficulty and label audit", _audit),
    "pruning.json": ("structured pruning", _pruning),
}


def summary(results: Path) -> str:
    """The card section: one row per step, from its report."""
    lines = [
        BEGIN,
        "## Training steps on this backbone",
        "",
        "Generated from the reports in `bench/results/` by `python -m training.card`; the",
        "methods, intervals and caveats are in [training the shared model](../docs/training.md).",
        "All on the synthetic demo set: they show the machinery, not real-world gains.",
        "",
        "| step | held-out result | outcome |",
        "|---|---|---|",
    ]
    for file, (name, row) in STEPS.items():
        path = results / file
        if not path.is_file():
            lines.append(f"| {name} | not run (`{file}` missing) | — |")
            continue
        try:
            lines.append(row(json.loads(path.read_text())))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise CardError(f"{path}: not a report this card can read ({exc!r})") from exc
    lines.append(END)
    return "\n".join(lines)


def write_card(card: Path, results: Path) -> None:
    """Replace the generated section of ``card`` (appended when absent). Raises CardError."""
    try:
        text = card.read_text()
    except OSError as exc:
        raise CardError(f"cannot read the model card {card}: {exc}") from exc
    section = summary(results)
    if BEGIN in text and END in text:
        before, _, rest = text.partition(BEGIN)
        _, _, after = rest.partition(END)
        text = before + section + after
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    try:
        card.write_text(text)
    except OSError as exc:
        raise CardError(f"cannot write the model card {card}: {exc}") from exc


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", type=Path, default=Path("bench/results"))
    parser.add_argument("--card", type=Path, default=Path("triton_repo/README.md"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        write_card(args.card, args.results)
    except CardError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 1
    logger.info("wrote the training summary into %s", args.card)
    return 0


if __name__ == "__main__":
    sys.exit(main())
