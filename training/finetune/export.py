"""The tuned backbone as a Triton model of its own, through the existing export path.

``training.nsfwjs.export.export_to_repository`` writes ``nsfw_<name>/`` with the ONNX file,
its parity check against the eager model, the prototypes of *this* model and
``modstream.backbone_sha256`` of the new file. A model name of its own
(``nsfw_mobilenet_v2_tuned``) leaves the default backbone, and every head, prototype and bank
embedding made from it, untouched: heads carry the sha256 of the backbone they were trained
on and are refused by any other, so they must be retrained on the tuned one before use.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path

from consumer.inference.ensemble import read_config
from consumer.moderation.heads import BACKBONE_SHA_PARAMETER
from training.finetune.split import SplitBackbone
from training.nsfwjs.errors import ImportFailed
from training.nsfwjs.export import ExportReport, export_to_repository, triton_name
from training.nsfwjs.models import NsfwModel
from training.prototypes import Prototypes, compute_prototypes, load_labelled

logger = logging.getLogger(__name__)

TUNED_NAME = "mobilenet_v2_tuned"


@dataclass(frozen=True)
class TunedExport:
    report: ExportReport
    folder: Path
    sha256: str


def tuned_model(backbone: SplitBackbone, name: str = TUNED_NAME) -> NsfwModel:
    """The full network with the tuned tail, under its own registry name."""
    cfg = backbone.model.cfg
    derived = (
        f"fine-tuned from nsfwjs {cfg.nsfwjs_name} ({cfg.source}) by python -m training.finetune"
    )
    model = NsfwModel(backbone.model.net, replace(cfg, name=name, source=derived))
    model.eval()
    return model


def builtin_prototypes(model: NsfwModel) -> Prototypes:
    """Prototypes recomputed with the tuned model: the old ones describe another embedding."""
    images, source = load_labelled(None)
    return compute_prototypes(model, images, source)


def export_tuned(model: NsfwModel, repo: Path, prototypes: Prototypes) -> TunedExport:
    """Export, parity-check and install ``<repo>/nsfw_<name>``; read its config back with
    Triton's protobuf. Raises ImportFailed when parity fails or the config does not parse."""
    report = export_to_repository(model, repo, prototypes)
    folder = repo / triton_name(model.cfg.name)
    config = read_config(folder / "config.pbtxt")
    if config.name != folder.name or BACKBONE_SHA_PARAMETER not in config.parameters:
        raise ImportFailed(f"{folder / 'config.pbtxt'}: name or backbone sha256 missing")
    sha256 = report.backbone_sha256
    logger.info(
        "exported %s (sha256 %s): max |Δprob| %.1e, max |Δembedding| %.1e",
        folder,
        sha256[:12],
        report.max_probs_diff,
        report.max_embedding_diff,
    )
    return TunedExport(report=report, folder=folder, sha256=sha256)
