"""Retrain the heads on the existing data plus the verdicts, export a new heads version.

The export never changes what is served: ``export_heads`` writes the next version number
and, once an ensemble pins a live version, leaves the pin where it was. The new version is
scored beside the live one (``MODSTREAM_HEADS__SHADOW_VERSION``) and promoted with
``modstream heads promote N`` when its shadow report is good.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from consumer.inference.ensemble import version_folders
from training.feedback.merge import merge_sets
from training.heads.cli import TrainOptions, train_command
from training.heads.embed import TrainingFailed

logger = logging.getLogger(__name__)

MERGED_FOLDER = "merged-set"
CARD_NAME = "model_card.md"


@dataclass(frozen=True)
class RetrainOptions:
    feedback: Path
    """The set ``build`` wrote."""
    base: tuple[Path, ...]
    """The existing training data, merged in so that a few verdicts refine the heads."""
    repo: Path
    out: Path
    backbone: str = "nsfw_mobilenet_v2"
    heads_model: str = "heads"
    cache_dir: Path | None = Path(".cache/heads")
    threads: int = 2
    draws: int = 5
    sizes: tuple[int, ...] | None = None
    """Learning-curve sizes; None: the trainer's own."""
    bootstrap_draws: int | None = None
    export: bool = True


@dataclass(frozen=True)
class Retrained:
    merged: Path
    version: str | None
    """The exported heads version; None when not exported."""


def retrain(options: RetrainOptions) -> Retrained:
    """Merge, train, report into ``out`` and export the next heads version into ``repo``.

    Raises ConfigError (one line): a bad set, a missing backbone, heads of another backbone.
    """
    merged = options.out / MERGED_FOLDER
    summary = merge_sets([options.feedback, *options.base], merged)
    logger.info("merged set: %s", summary)
    before = heads_versions(options.repo, options.heads_model)
    card = options.out / CARD_NAME
    if not card.exists():
        # The repository's own card describes the live heads; this one the candidate's.
        card.write_text("# Heads retrained on reviewers' verdicts\n", encoding="utf-8")
    train = TrainOptions(
        data=merged,
        repo=options.repo,
        backbone=options.backbone,
        out=options.out,
        card=card,
        cache_dir=options.cache_dir,
        export=options.export,
        threads=options.threads,
        draws=options.draws,
        progress=False,
    )
    if options.sizes is not None:
        train = replace(train, sizes=options.sizes)
    if options.bootstrap_draws is not None:
        train = replace(train, bootstrap_draws=options.bootstrap_draws)
    status = train_command(train)
    if status != 0:
        raise TrainingFailed(f"training on {merged} ended with status {status}")
    if not options.export:
        return Retrained(merged, None)
    added = sorted(heads_versions(options.repo, options.heads_model) - before, key=int)
    if not added:
        raise TrainingFailed(f"no new heads version appeared in {options.repo}")
    return Retrained(merged, added[-1])


def heads_versions(repo: Path, heads_model: str) -> set[str]:
    return {str(version) for version in version_folders(repo / heads_model)}


def base_sets(given: Sequence[Path]) -> tuple[Path, ...]:
    """The base sets, each checked to exist; TrainingFailed names a missing one."""
    for path in given:
        if not path.exists():
            raise TrainingFailed(f"base set {path} does not exist")
    return tuple(given)
