"""``python -m training.audit``: difficulty scores and a label audit over the backbone pool.

    python -m training.audit --data DIR_OR_MANIFEST [--out bench/results] [--flip 0.1]
        [--top 50] [--seed 0] [--repeats 1] [--repo triton_repo] [--backbones a,b,c]
        [--draws 1000]

Embeds every image with each backbone of the pool (cached as ``modstream train heads``
caches), fits multi-class heads out of fold, and writes ``audit.json``,
``audit_precision.png`` (with ``--flip`` above 0) and ``audit.html`` into ``--out``. With
``--flip F`` a share F of the train split's labels is flipped on purpose and each score is
measured at finding them; with ``--flip 0`` the given labels of every row are audited as they
are. Exit 2 with one line on stderr for a missing, empty or unusable set.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from consumer.errors import ConfigError
from training.audit.experiment import AuditSet, class_labels, listing, run_audit
from training.audit.page import plot_precision, write_page
from training.audit.repeats import repeat
from training.audit.scores import SCORE_NAMES
from training.heads.cli import image_references, load_rows, resolve_splits
from training.heads.embed import Backbone, TrainingFailed, embed_images
from training.heads.fit import FitConfig
from training.heads.metrics import BOOTSTRAP_DRAWS

logger = logging.getLogger(__name__)

POOL = ("nsfw_mobilenet_v2", "nsfw_mobilenet_v2_mid", "nsfw_inception_v3")
"""The served backbone first: re-weighting is measured on its heads."""
JSON_NAME, PLOT_NAME, PAGE_NAME = "audit.json", "audit_precision.png", "audit.html"
SYNTHETIC = (
    "The demo set is synthetic (pasted QR codes, overlaid text, drawn cards, procedural "
    "negatives) and its flips are planted uniformly at random: these numbers show that the "
    "audit finds random label noise on these images with these backbones. They say nothing "
    "about real uploads, where label errors cluster on ambiguous images and are much harder to "
    "tell from honest difficulty."
)

DEFINITIONS = {
    "confusion_perplexity": "exp of the mean over backbones of each head's entropy (nats); "
    "1 = every head sure, number of classes = every head uniform",
    "total_entropy": "entropy (nats) of the mean of the backbones' predictions",
    "disagreement": "total_entropy - mean per-head entropy (mutual information, >= 0)",
    "suspicion": "1 - self-confidence: the pool mean's probability of the given label "
    "(confident-learning baseline)",
    "precision_at_k": "share of planted flips among the k highest-scored train labels, "
    "Wilson 95% interval",
}


@dataclass(frozen=True)
class AuditOptions:
    data: Path
    out: Path = Path("bench/results")
    flip: float = 0.1
    top: int = 50
    seed: int = 0
    repo: Path = Path("triton_repo")
    backbones: tuple[str, ...] = POOL
    cache_dir: Path | None = Path(".cache/heads")
    draws: int = BOOTSTRAP_DRAWS
    folds: int = 5
    repeats: int = 1
    """Runs of the flip experiment, each with its own seed (``seed``, ``seed + 1``, ...)."""
    threads: int = 2
    progress: bool = False


def build_set(options: AuditOptions) -> tuple[AuditSet, list[bytes], dict[str, Any]]:
    """Load the labelled set and embed it with every backbone of the pool.

    Raises ConfigError (one line) for a bad set, a missing backbone or too little data.
    """
    rows = load_rows(options.data)
    classes, labels, single = class_labels([row.labels for row in rows])
    if len(classes) < 2:
        raise TrainingFailed(f"{options.data}: no labelled category, nothing to audit")
    embeddings = {}
    described = {}
    kept = None
    for name in options.backbones:
        backbone = Backbone.from_repo(options.repo, name)
        embedded = embed_images(
            [row.image for row in rows],
            backbone,
            cache_dir=options.cache_dir,
            threads=options.threads,
            progress=options.progress,
        )
        # Every backbone sees the same decoded pixels, so the same images decode for all.
        if kept is None:
            kept = [int(i) for i in embedded.kept if single[i]]
        position = {int(i): p for p, i in enumerate(embedded.kept)}
        embeddings[name] = embedded.embeddings[[position[i] for i in kept]]
        described[name] = {"sha256": backbone.sha256, "input_size": backbone.input_size}
    if not kept:
        raise TrainingFailed(f"{options.data}: no single-label image decodes, nothing to audit")
    chosen = [rows[i] for i in kept]
    data = AuditSet(
        embeddings=embeddings,
        labels=labels[kept],
        classes=classes,
        splits=resolve_splits(chosen, 0.3, options.seed),
        groups=tuple(row.group for row in chosen),
        references=tuple(image_references(chosen)),
    )
    facts = {
        "images": len(rows),
        "audited_images": len(kept),
        "multi_label_left_out": int((~single).sum()),
    }
    return data, [row.image for row in chosen], {"backbones": described, **facts}


def audit_command(options: AuditOptions) -> int:
    """Run the audit and write its files; returns the exit status. Raises ConfigError."""
    started = time.perf_counter()
    data, images, facts = build_set(options)
    cfg = FitConfig(folds=options.folds, seed=options.seed)
    try:
        result = run_audit(data, flip=options.flip, seed=options.seed, cfg=cfg, draws=options.draws)
    except ValueError as exc:
        raise TrainingFailed(f"{options.data}: {exc}") from exc
    top = listing(data, result, options.top)
    repeated = None
    if options.repeats > 1 and options.flip > 0:
        seeds = range(options.seed, options.seed + options.repeats)
        repeated = repeat(data, list(seeds), options.flip, options.folds)
    report: dict[str, Any] = {
        "synthetic_note": SYNTHETIC,
        "data": str(options.data),
        "classes": list(data.classes),
        "multi_class_formulation": "each image's class is its one category, or 'none'",
        "scores": list(SCORE_NAMES),
        "definitions": DEFINITIONS,
        "seed": options.seed,
        "folds": options.folds,
        "bootstrap_draws": options.draws,
        **facts,
        **result.report,
        "repeats": repeated,
        "most_suspicious": top,
    }
    report["total_seconds"] = round(time.perf_counter() - started, 2)
    options.out.mkdir(parents=True, exist_ok=True)
    (options.out / JSON_NAME).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    if "precision_curve" in report:
        plot_precision(report, options.out / PLOT_NAME)
    write_page(
        options.out / PAGE_NAME, top, [images[row["index"]] for row in top], _summary(report)
    )
    logger.info("%s", _summary(report))
    logger.info("wrote %s, %s and %s in %s", JSON_NAME, PLOT_NAME, PAGE_NAME, options.out)
    return 0


def _summary(report: dict[str, Any]) -> str:
    planted = report.get("planted", 0)
    head = f"{report['audited_rows']} labels audited"
    if not planted:
        return f"{head}; sorted by self-confidence in the given label, lowest first."
    at = report["precision_at_k"]["suspicion"].get("50") or {}
    return (
        f"{head}, {planted} of them flipped on purpose (highlighted); sorted by "
        f"self-confidence in the given label, lowest first; precision@50 "
        f"{at.get('value')} (chance {report['chance']}). {SYNTHETIC}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m training.audit",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--data", type=Path, required=True, help="manifest.jsonl or folder")
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    parser.add_argument("--flip", type=float, default=0.1, help="share of train labels to flip")
    parser.add_argument("--top", type=int, default=50, help="labels listed in audit.html")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repo", type=Path, default=Path("triton_repo"))
    parser.add_argument("--backbones", default=",".join(POOL), help="comma-separated")
    parser.add_argument("--repeats", type=int, default=1, help="flip experiments, one seed each")
    parser.add_argument("--draws", type=int, default=BOOTSTRAP_DRAWS, help="bootstrap draws")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    if not 0.0 <= args.flip < 1.0 or args.top < 1 or args.draws < 1 or args.repeats < 1:
        sys.stderr.write(
            "python -m training.audit: need 0 <= --flip < 1, --top, --draws and --repeats >= 1\n"
        )
        return 2
    options = AuditOptions(
        data=args.data,
        out=args.out,
        flip=args.flip,
        top=args.top,
        seed=args.seed,
        repo=args.repo,
        backbones=tuple(n for n in args.backbones.split(",") if n),
        draws=args.draws,
        repeats=args.repeats,
    )
    try:
        return audit_command(options)
    except ConfigError as exc:
        sys.stderr.write(f"python -m training.audit: {' '.join(str(exc).split())}\n")
        return 2
