"""Export an accepted adapted backbone as its own Triton model, through the usual export path.

The adapted network keeps the preprocessing and classes of the one it came from, under a new
name; ``training.nsfwjs.export`` writes it, checks the ONNX file against the eager model
and records the file's sha256, so heads and prototypes of the unadapted backbone are refused
as stale by the served model.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from training.nsfwjs.export import export_to_repository
from training.nsfwjs.models import NsfwModel
from training.prototypes import compute_prototypes, load_labelled


def export_adapted(model: NsfwModel, repo: Path, name: str) -> dict[str, Any]:
    """Write ``repo/nsfw_<name>``; raises ImportFailed when parity fails (nothing installed)."""
    derived = (
        f"domain-adapted from nsfwjs {model.cfg.nsfwjs_name} ({model.cfg.source}) by "
        "python -m training.adapt"
    )
    adapted = NsfwModel(model.net, dataclasses.replace(model.cfg, name=name, source=derived))
    adapted = adapted.cpu().eval()
    images, source = load_labelled(None)
    prototypes = compute_prototypes(adapted, images, source)
    return dataclasses.asdict(export_to_repository(adapted, repo, prototypes))
