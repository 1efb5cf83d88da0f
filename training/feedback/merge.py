"""One labelled set from several: the existing training data plus the verdicts.

The heads trainer reads one folder or manifest; a few dozen verdicts alone would replace
heads trained on hundreds of images with heads trained on those few. So the sets are loaded
the way the trainer loads them (any form it reads: folder per category or manifest), and
written again as one manifest, each set's images under its own sub-folder, with their
labels, tenants, splits and groups as they were. Groups are prefixed with the set's index so
that two sets cannot join groups by sharing a name by chance.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from consumer.runtime.folders import replace_folder
from training.feedback.build import image_suffix
from training.heads.cli import dataset_metadata, image_references
from training.heads.data import load_dataset, summary
from training.heads.labelled import LabelledImage
from training.heads.manifest import MANIFEST_NAME

logger = logging.getLogger(__name__)


def merge_sets(sets: Sequence[Path], out: Path) -> dict[str, Any]:
    """Write ``sets`` as one manifest set in ``out`` (replaced whole); returns its summary.

    Raises DatasetError (a ConfigError) naming the bad rows of any set.
    """
    loaded = [(path, load_dataset(path)) for path in sets]

    def fill(staging: Path) -> dict[str, Any]:
        rows = []
        for index, (path, images) in enumerate(loaded):
            folder = f"set{index}"
            (staging / folder).mkdir()
            for number, (image, reference) in enumerate(
                zip(images, image_references(images), strict=True)
            ):
                name = f"{folder}/{_file_name(reference, path, number, image.image)}"
                (staging / name).parent.mkdir(parents=True, exist_ok=True)
                (staging / name).write_bytes(image.image)
                rows.append(_row(name, image, f"{folder}:"))
            logger.info("merged %d images from %s", len(images), path)
        text = "".join(json.dumps(row, sort_keys=True) + "\n" for row in rows)
        (staging / MANIFEST_NAME).write_text(text, encoding="utf-8")
        notes = [str(dataset_metadata(path).get("note") or "") for path, _ in loaded]
        metadata = {
            "name": " + ".join(str(dataset_metadata(p).get("name") or p.name) for p in sets),
            "note": " ".join(note for note in notes if note),
            "merged_from": [str(path) for path in sets],
        }
        (staging / "metadata.json").write_text(json.dumps(metadata, indent=2) + "\n")
        return summary([image for _, images in loaded for image in images])

    return replace_folder(out, fill)


def _file_name(reference: str, base: Path, number: int, data: bytes) -> str:
    """The image's path inside its set, kept when the image is a file of the set: the trainer
    tells benign photos by their file name (``plain_photo-...``)."""
    folder = (base if base.is_dir() else base.parent).resolve()
    if "://" not in reference:
        for candidate in (folder / reference, Path(reference)):
            try:
                inside = candidate.resolve().relative_to(folder)
            except (ValueError, OSError):
                continue
            if inside.parts and candidate.is_file():
                return inside.as_posix()
    return f"{number:06d}.{image_suffix(data)}"


def _row(name: str, image: LabelledImage, prefix: str) -> dict[str, Any]:
    return {
        "image": name,
        "label": sorted(image.labels) or None,
        "tenant": image.tenant,
        "split": image.split,
        "group": prefix + image.group,
    }
