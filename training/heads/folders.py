"""Labelled images from a folder per category::


    DIR/<category>/*.jpg|jpeg|png|webp|gif|bmp|tif|tiff
    DIR/none/...  or  DIR/negative/...        negatives (no label)
    DIR/<category>/<group>/*.jpg              images sharing a group (e.g. crops of one photo)

An image directly in a category folder is a group of its own; images in a sub-folder share
the sub-folder's name as their group, across categories. Hidden files (``.DS_Store``) are
not data and are passed over; any other file that is not an image is a bad row.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from consumer.runtime.settings import ImagingSettings
from training.heads.labelled import (
    NEGATIVE_FOLDERS,
    DatasetError,
    LabelledImage,
    Pending,
    category_problem,
    finish_load,
    not_allowed,
    parse_categories,
    read_files,
)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff")


def load_folder(
    root: Path,
    *,
    categories: Iterable[str] | None = None,
    settings: ImagingSettings | None = None,
) -> list[LabelledImage]:
    """``root/<category>/`` folders of images (``none``/``negative``: negatives).

    Raises DatasetError naming every bad folder and file.
    """
    if not root.is_dir():
        raise DatasetError([f"{root}: not found or not a folder"], str(root))
    allowed = None if categories is None else parse_categories(categories)
    problems: list[str] = []
    pending: list[Pending] = []
    for entry in sorted(root.iterdir()):
        if entry.name.startswith("."):
            continue
        if not entry.is_dir():
            problems.append(f"{entry}: a file outside the category folders")
            continue
        label = entry.name
        if label not in NEGATIVE_FOLDERS:
            problem = category_problem(label, "folder") or not_allowed(label, allowed, "folder")
            if problem is not None:
                problems.append(f"{entry}: {problem}")
                continue
        labels = frozenset() if label in NEGATIVE_FOLDERS else frozenset({label})
        found = _folder_images(entry, labels, problems)
        if not found:
            problems.append(f"{entry}: no images")
        pending.extend(found)
    read_files(pending, problems)
    return finish_load(pending, problems, settings, str(root))


def _folder_images(folder: Path, labels: frozenset[str], problems: list[str]) -> list[Pending]:
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(name for name in dirnames if not name.startswith("."))
        here = Path(dirpath)
        relative = here.relative_to(folder)
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            path = here / name
            if path.suffix.lower() not in IMAGE_SUFFIXES:
                problems.append(f"{path}: not an image file ({', '.join(IMAGE_SUFFIXES)})")
                continue
            group = relative.parts[0] if relative.parts else str(path)
            reference = str(path.relative_to(folder))
            found.append(Pending(str(path), reference, labels, None, None, group, path))
    return found
