"""Export trained heads as a new version of the Triton heads model, checked for parity.

    <repo>/heads/config.pbtxt          the heads model (Python backend), all versions loaded
    <repo>/heads/<N>/model.py          training/heads/triton_model.py
    <repo>/heads/<N>/heads.npz         weight [D, K], bias [K], normalize [K]
    <repo>/heads/<N>/heads.json        the HeadsDescriptor every response carries
    <repo>/moderation/config.pbtxt     the ensemble backbone → heads, pinned to a version

A new version never goes live by itself once an ensemble exists: it is promoted
(``modstream heads promote N``) after its shadow report. Only the first version pins the
ensemble. The export refuses heads trained on another backbone than the repository serves,
and checks the served scoring code against the trained heads before the version appears.
"""

from __future__ import annotations

import io
import logging
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from consumer.errors import ConfigError
from consumer.inference import ensemble
from consumer.moderation.heads import BACKBONE_SHA_PARAMETER, HeadsDescriptor, check_unique
from consumer.runtime.folders import replace_folder
from training.heads import triton_model
from training.heads.trained import TrainedHeads

logger = logging.getLogger(__name__)

DEFAULT_HEADS_MODEL = "heads"
DEFAULT_ENSEMBLE = "moderation"
PARITY_TOLERANCE = 1e-6


class HeadsExportError(ConfigError):
    """The heads cannot be exported to this repository as they are."""


@dataclass(frozen=True)
class ExportedHeads:
    version: str
    path: Path
    descriptor: HeadsDescriptor
    pinned: bool
    """Whether this export pinned the ensemble (only the first version does)."""
    max_parity_diff: float


def export_heads(
    repo: Path,
    trained: TrainedHeads,
    *,
    heads_model: str = DEFAULT_HEADS_MODEL,
    ensemble_name: str = DEFAULT_ENSEMBLE,
) -> ExportedHeads:
    """Write ``trained`` as the next version of ``heads_model`` in ``repo``.

    Raises HeadsExportError when the repository's backbone is not the one the heads were
    trained on, or when a head repeats a category name.
    """
    backbone = ensemble.read_config(repo / trained.backbone / "config.pbtxt")
    served_sha = backbone.parameters[BACKBONE_SHA_PARAMETER].string_value
    if served_sha != trained.backbone_sha256:
        raise HeadsExportError(
            f"the heads were trained on {trained.backbone} sha256 "
            f"{trained.backbone_sha256[:12]}, but {repo} serves sha256 {served_sha[:12] or '?'}: "
            "retrain them on the served backbone (their embeddings are stale)"
        )
    builtin = backbone.parameters["modstream.class_names"].string_value.split(",")
    try:
        check_unique(trained.categories, builtin)
    except ValueError as exc:
        raise HeadsExportError(str(exc)) from exc

    model_dir = repo / heads_model
    model_dir.mkdir(parents=True, exist_ok=True)
    version = str(1 + max(ensemble.version_folders(model_dir), default=0))
    descriptor = HeadsDescriptor(
        heads_model=heads_model,
        version=version,
        backbone=trained.backbone,
        backbone_sha256=trained.backbone_sha256,
        embedding_dim=trained.embedding_dim,
        categories=trained.categories,
        trained_at=datetime.now(UTC),
        summary=trained.summary,
    )

    def fill(staging: Path) -> float:
        weights = {
            "weight": trained.weight.astype(np.float32),
            "bias": trained.bias.astype(np.float32),
            "normalize": trained.normalize.astype(np.bool_),
        }
        buffer = io.BytesIO()
        np.savez(buffer, **weights)
        (staging / triton_model.WEIGHTS_FILE).write_bytes(buffer.getvalue())
        (staging / triton_model.DESCRIPTOR_FILE).write_text(descriptor.model_dump_json(indent=2))
        shutil.copyfile(triton_model.__file__, staging / "model.py")
        return _check_parity(trained, staging)

    parity = replace_folder(model_dir / version, fill)
    (model_dir / "config.pbtxt").write_text(
        ensemble.render(ensemble.heads_config(backbone, heads_model))
    )
    ensemble_path = repo / ensemble_name / "config.pbtxt"
    pinned = not ensemble_path.exists()
    live = version if pinned else ensemble.live_version(ensemble.read_config(ensemble_path))
    # Rewritten on every export, pinned where it was: the copy of the backbone's parameters
    # stays that of the backbone served now.
    config = ensemble.ensemble_config(backbone, heads_model, live or version, name=ensemble_name)
    if not pinned:
        previous = ensemble.previous_version(ensemble.read_config(ensemble_path))
        if previous is not None:
            config.parameters[ensemble.PREVIOUS_VERSION_PARAMETER].string_value = previous
    (repo / ensemble_name / "1").mkdir(parents=True, exist_ok=True)
    ensemble_path.write_text(ensemble.render(config))
    logger.info(
        "exported heads %s version %s (%d categories, parity %.1e)%s",
        heads_model,
        version,
        len(trained.categories),
        parity,
        "; the ensemble serves it" if pinned else "; promote it with `modstream heads promote`",
    )
    return ExportedHeads(version, model_dir / version, descriptor, pinned, parity)


def _check_parity(trained: TrainedHeads, folder: Path) -> float:
    """Score random and real-looking embeddings with the served code and the trained heads."""
    rng = np.random.default_rng(0)
    probe = np.concatenate(
        [
            rng.normal(size=(16, trained.embedding_dim)).astype(np.float32),
            np.abs(rng.normal(size=(16, trained.embedding_dim))).astype(np.float32),
            np.zeros((1, trained.embedding_dim), dtype=np.float32),
        ]
    )
    with np.load(folder / triton_model.WEIGHTS_FILE) as data:
        served = triton_model.score(probe, {k: data[k] for k in ("weight", "bias", "normalize")})
    diff = float(np.max(np.abs(served - trained.scores(probe))))
    if not diff <= PARITY_TOLERANCE:
        raise HeadsExportError(
            f"the served heads differ from the trained ones by {diff:.2e} "
            f"(bound {PARITY_TOLERANCE:.0e}); the export is left out of the repository"
        )
    return diff
