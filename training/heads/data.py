"""Labelled images for tenant heads: a folder per category, or a JSONL manifest.

Folder form::

    DIR/<category>/*.jpg|jpeg|png|webp|gif|bmp|tif|tiff
    DIR/none/...  or  DIR/negative/...        negatives (no label)
    DIR/<category>/<group>/*.jpg              images sharing a group (e.g. crops of one photo)

An image directly in a category folder is a group of its own; images in a sub-folder share
the sub-folder's name as their group, across categories. Hidden files (``.DS_Store``) are
not data and are passed over; any other file that is not an image is a bad row.

Manifest form (``manifest.jsonl``), one JSON object per line::

    {"image": "imgs/a.jpg", "label": "qr_solicitation", "tenant": "shop", "split": "train",
     "group": "beach"}

``image`` is a path relative to the manifest's folder (not leaving it) or an http(s) URL;
``label`` is a category name, a list of them (multi-label) or null / [] for a negative, and
must be given; ``tenant``, ``split`` (train, val or test) and ``group`` (default: the image
itself) are optional. Blank lines are allowed; other fields are not.

Every image is read, URLs through the service's own fetcher (``ImageFetcher``, so the egress
guard refuses private hosts), and decoded with the consumer's ``decode_image`` and limits: a
set that loads is a set the service can score. Nothing is skipped. Every bad row is
collected and the load fails with one ``DatasetError`` whose one-line message names the
first rows and the count; ``problems`` holds them all. Each problem names its row::

    manifest.jsonl:3: not valid JSON (Expecting ',' delimiter at column 14)
    manifest.jsonl:4: unknown field 'labels' (a row has image, label, tenant, split, group)
    manifest.jsonl:5: 'label' is missing (null or [] marks a negative)
    manifest.jsonl:6: split 'dev' is not one of train, val, test
    manifest.jsonl:7: label 'Weapons' is not a category name (a lowercase letter, then ...)
    manifest.jsonl:8: label 'weapons' is not one of the categories given (...)
    manifest.jsonl:9: image 'x.jpg' not found
    manifest.jsonl:10: image 'y.jpg' does not decode (image_corrupt: ...)
    manifest.jsonl:11: image 'https://...' cannot be fetched (image_url_blocked: ...)
    DIR/Weapons: folder 'Weapons' is not a category name (a lowercase letter, then ...)

    python -m training.heads.data PATH [--categories a,b,c]

checks a set the way training loads it and prints its counts as JSON (exit 2: bad rows).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import posixpath
import sys
from collections import Counter
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator

from consumer.errors import ConfigError, ImageRejected
from consumer.imaging.decode import ImageLimits, decode_image
from consumer.imaging.fetch import ImageFetcher
from consumer.moderation.heads import CategoryName, TenantName
from consumer.runtime.settings import ImagingSettings

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff")
NEGATIVE_FOLDERS = ("none", "negative")
SPLITS = ("train", "val", "test")
MANIFEST_NAME = "manifest.jsonl"
MAX_LISTED = 5
"""Problems quoted in a DatasetError's message; ``problems`` holds every one."""
CHECK_SIZE = 224
"""Decode check at the backbone's input side, so JPEG draft scaling works as in the consumer."""
FETCH_CONCURRENCY = 8

_CATEGORY = TypeAdapter(CategoryName)
_NAME_RULE = "a lowercase letter, then up to 63 lowercase letters, digits or '_'"
_FIELDS = "image, label, tenant, split, group"


@dataclass(frozen=True)
class LabelledImage:
    """One labelled image: encoded bytes and what the user said about them."""

    image: bytes
    labels: frozenset[str]
    """Empty for a negative (benign) image."""
    tenant: str | None
    split: str | None
    source: str
    """Where it came from, for messages: ``manifest.jsonl:12`` or a file path."""
    group: str
    """Images of one group stay on one side of a train/test split."""


class DatasetError(ConfigError):
    """The labelled data has bad rows; ``problems`` names every one, one line each."""

    def __init__(self, problems: Sequence[str], where: str) -> None:
        self.problems = tuple(problems)
        if len(self.problems) == 1:
            message = self.problems[0]
        else:
            shown = "; ".join(self.problems[:MAX_LISTED])
            rest = len(self.problems) - MAX_LISTED
            more = f"; and {rest} more" if rest > 0 else ""
            message = f"{len(self.problems)} bad rows in {where}: {shown}{more}"
        super().__init__(message)


def category_problem(name: str, what: str = "label") -> str | None:
    """Why ``name`` cannot be a category (None when it can)."""
    if name in NEGATIVE_FOLDERS:
        hint = "; give null or [] instead" if what == "label" else ""
        return f"{what} {name!r} is reserved for negatives{hint}"
    try:
        _CATEGORY.validate_python(name)
    except ValidationError:
        return f"{what} {name!r} is not a category name ({_NAME_RULE})"
    return None


def parse_categories(names: str | Iterable[str]) -> frozenset[str]:
    """Category names from ``--categories a,b,c`` (or an iterable); raises DatasetError."""
    if isinstance(names, str):
        names = names.replace(",", " ").split()
    chosen = frozenset(names)
    problems = [
        f"--categories: {problem}"
        for name in sorted(chosen)
        if (problem := category_problem(name, "category")) is not None
    ]
    if problems:
        raise DatasetError(problems, "--categories")
    if not chosen:
        raise DatasetError(["--categories: no category names given"], "--categories")
    return chosen


class _Row(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    image: str = Field(min_length=1)
    label: tuple[str, ...]
    tenant: TenantName | None = None
    split: Literal["train", "val", "test"] | None = None
    group: str | None = Field(default=None, min_length=1)

    @field_validator("label", mode="before")
    @classmethod
    def _labels(cls, value: object) -> tuple[str, ...]:
        if value is None:
            return ()
        names = [value] if isinstance(value, str) else value
        if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
            raise ValueError(
                "'label' must be a category name, a list of them, or null / [] for a negative"
            )
        for name in names:
            problem = category_problem(name)
            if problem is not None:
                raise ValueError(problem)
        return tuple(names)


def _describe(error: Any) -> str:
    """One pydantic error as a phrase a user can act on."""
    loc = error.get("loc") or ("row",)
    field = str(loc[0])
    kind = error.get("type")
    if kind == "extra_forbidden":
        return f"unknown field {field!r} (a row has {_FIELDS})"
    if kind == "missing":
        hint = " (null or [] marks a negative)" if field == "label" else ""
        return f"{field!r} is missing{hint}"
    if kind == "value_error":
        return str(error["ctx"]["error"])
    if field == "split":
        return f"split {error.get('input')!r} is not one of {', '.join(SPLITS)}"
    if field == "tenant":
        return (
            f"tenant {error.get('input')!r} is not a tenant name (a lowercase letter or digit, "
            "then up to 63 of those, '.', '_' or '-')"
        )
    return f"{field}: {error.get('msg')}"


@dataclass
class _Pending:
    """A row that validated, waiting for its bytes and the decode check."""

    source: str
    reference: str
    labels: frozenset[str]
    tenant: str | None
    split: str | None
    group: str
    path: Path | None
    """The file to read; None for a URL."""
    data: bytes | None = None


def load_dataset(
    path: Path,
    *,
    categories: Iterable[str] | None = None,
    settings: ImagingSettings | None = None,
    fetcher: ImageFetcher | None = None,
) -> list[LabelledImage]:
    """Load a manifest (a ``.jsonl`` file, or a folder holding ``manifest.jsonl``) or else a
    folder per category. Raises DatasetError naming every bad row."""
    if path.is_file():
        return load_manifest(path, categories=categories, settings=settings, fetcher=fetcher)
    if (path / MANIFEST_NAME).is_file():
        return load_manifest(
            path / MANIFEST_NAME, categories=categories, settings=settings, fetcher=fetcher
        )
    return load_folder(path, categories=categories, settings=settings)


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
    pending: list[_Pending] = []
    for entry in sorted(root.iterdir()):
        if entry.name.startswith("."):
            continue
        if not entry.is_dir():
            problems.append(f"{entry}: a file outside the category folders")
            continue
        label = entry.name
        if label not in NEGATIVE_FOLDERS:
            problem = category_problem(label, "folder") or _unknown(label, allowed, "folder")
            if problem is not None:
                problems.append(f"{entry}: {problem}")
                continue
        labels = frozenset() if label in NEGATIVE_FOLDERS else frozenset({label})
        found = _folder_images(entry, labels, problems)
        if not found:
            problems.append(f"{entry}: no images")
        pending.extend(found)
    _read_files(pending, problems)
    return _finish(pending, problems, settings, str(root))


def _folder_images(folder: Path, labels: frozenset[str], problems: list[str]) -> list[_Pending]:
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
            found.append(_Pending(str(path), reference, labels, None, None, group, path))
    return found


def load_manifest(
    path: Path,
    *,
    categories: Iterable[str] | None = None,
    settings: ImagingSettings | None = None,
    fetcher: ImageFetcher | None = None,
) -> list[LabelledImage]:
    """The rows of a JSONL manifest, images read or fetched and decode-checked.

    Call from synchronous code (URLs are fetched in a private event loop); a ``fetcher``
    given must not be bound to another loop. Raises DatasetError naming every bad row.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError([f"{path}: cannot be read ({exc})"], str(path)) from exc
    allowed = None if categories is None else parse_categories(categories)
    base = path.parent
    problems: list[str] = []
    pending: list[_Pending] = []
    first_seen: dict[str, int] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        source = f"{path}:{number}"
        row = _parse_row(line, source, problems)
        if row is None:
            continue
        unknown = [p for name in row.label if (p := _unknown(name, allowed, "label"))]
        if unknown:
            problems.append(f"{source}: {'; '.join(unknown)}")
            continue
        if row.image in first_seen:
            problems.append(
                f"{source}: image {row.image!r} is listed again (first at line "
                f"{first_seen[row.image]}); give one row with a list of labels"
            )
            continue
        first_seen[row.image] = number
        file = _local_path(row.image, base, source, problems)
        if file is None and not _is_url(row.image):
            continue
        pending.append(
            _Pending(
                source,
                row.image,
                frozenset(row.label),
                row.tenant,
                row.split,
                row.group or row.image,
                file,
            )
        )
    _read_files(pending, problems)
    urls = [item for item in pending if item.path is None]
    if urls:
        asyncio.run(_fetch_all(urls, settings or ImagingSettings(), fetcher, problems))
    return _finish(pending, problems, settings, str(path))


def _parse_row(line: str, source: str, problems: list[str]) -> _Row | None:
    try:
        value = json.loads(line)
    except json.JSONDecodeError as exc:
        problems.append(f"{source}: not valid JSON ({exc.msg} at column {exc.colno})")
        return None
    if not isinstance(value, dict):
        problems.append(f"{source}: expected a JSON object, got {type(value).__name__}")
        return None
    try:
        return _Row.model_validate(value)
    except ValidationError as exc:
        problems.append(f"{source}: {'; '.join(_describe(e) for e in exc.errors())}")
        return None


def _unknown(name: str, allowed: frozenset[str] | None, what: str) -> str | None:
    if allowed is None or name in allowed:
        return None
    return f"{what} {name!r} is not one of the categories given ({', '.join(sorted(allowed))})"


def _is_url(reference: str) -> bool:
    return reference.startswith(("http://", "https://"))


def _local_path(reference: str, base: Path, source: str, problems: list[str]) -> Path | None:
    """The file a manifest's ``image`` names, or None (a URL, or a problem recorded)."""
    if _is_url(reference):
        return None
    if "://" in reference:
        problems.append(
            f"{source}: image {reference!r}: only http(s) URLs or paths relative to the "
            "manifest are read"
        )
        return None
    normal = posixpath.normpath(reference.replace("\\", "/"))
    # Manifests may come from someone else: a row must not read files outside their folder.
    if posixpath.isabs(normal) or normal == ".." or normal.startswith("../"):
        problems.append(f"{source}: image {reference!r} is outside the manifest's folder")
        return None
    return base / normal


def _read_files(pending: list[_Pending], problems: list[str]) -> None:
    for item in pending:
        if item.path is None:
            continue
        try:
            item.data = item.path.read_bytes()
        except FileNotFoundError:
            problems.append(f"{item.source}: image {item.reference!r} not found")
        except IsADirectoryError:
            problems.append(f"{item.source}: image {item.reference!r} is a folder")
        except OSError as exc:
            problems.append(
                f"{item.source}: image {item.reference!r} cannot be read ({exc.strerror})"
            )


async def _fetch_all(
    items: list[_Pending],
    settings: ImagingSettings,
    fetcher: ImageFetcher | None,
    problems: list[str],
) -> None:
    client = fetcher if fetcher is not None else ImageFetcher(settings)
    gate = asyncio.Semaphore(FETCH_CONCURRENCY)

    async def fetch(item: _Pending) -> None:
        async with gate:
            try:
                item.data = await client.fetch(item.reference)
            except ImageRejected as exc:
                problems.append(
                    f"{item.source}: image {item.reference!r} cannot be fetched "
                    f"({exc.code}: {exc.message})"
                )

    try:
        await asyncio.gather(*(fetch(item) for item in items))
    finally:
        if fetcher is None:
            await client.close()


def _finish(
    pending: list[_Pending],
    problems: list[str],
    settings: ImagingSettings | None,
    where: str,
) -> list[LabelledImage]:
    """Decode-check what was read, then fail with every problem or return the images."""
    readable = [item for item in pending if item.data is not None]
    settings = settings or ImagingSettings()
    limits = ImageLimits.from_settings(settings)
    # Pillow releases the GIL while decoding: threads check images side by side.
    with ThreadPoolExecutor(max_workers=settings.decode_workers) as pool:
        checks = list(pool.map(lambda item: _decode_problem(item, limits), readable))
    problems.extend(problem for problem in checks if problem is not None)
    if problems:
        # Rows in file order, whichever check found them.
        raise DatasetError(sorted(problems, key=_row_order), where)
    if not readable:
        raise DatasetError([f"{where}: no labelled images"], where)
    images = [
        LabelledImage(
            image=item.data,
            labels=item.labels,
            tenant=item.tenant,
            split=item.split,
            source=item.source,
            group=item.group,
        )
        for item in readable
        if item.data is not None
    ]
    negatives = sum(1 for image in images if not image.labels)
    logger.info("loaded %d labelled images (%d negatives) from %s", len(images), negatives, where)
    return images


def _decode_problem(item: _Pending, limits: ImageLimits) -> str | None:
    if item.data is None:
        return None
    try:
        decode_image(item.data, CHECK_SIZE, limits)
    except ImageRejected as exc:
        return (
            f"{item.source}: image {item.reference!r} does not decode ({exc.code}: {exc.message})"
        )
    return None


def _row_order(problem: str) -> tuple[str, int, str]:
    """Sort key: the source, then the line number as a number (``m.jsonl:10`` after ``:9``)."""
    head, _, rest = problem.partition(": ")
    source, _, line = head.rpartition(":")
    if source and line.isdigit():
        return source, int(line), rest
    return head, 0, rest


def summary(images: Sequence[LabelledImage]) -> dict[str, Any]:
    """Counts of a loaded set: images, negatives, per label, split, tenant; groups."""
    labels: Counter[str] = Counter(label for image in images for label in image.labels)
    return {
        "images": len(images),
        "negatives": sum(1 for image in images if not image.labels),
        "labels": dict(sorted(labels.items())),
        "splits": dict(sorted(Counter(image.split or "unset" for image in images).items())),
        "tenants": dict(sorted(Counter(image.tenant or "platform" for image in images).items())),
        "groups": len({image.group for image in images}),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m training.heads.data",
        description="Check a labelled set (folder per category or JSONL manifest).",
    )
    parser.add_argument("path", type=Path, help="manifest.jsonl, or a folder")
    parser.add_argument("--categories", help="allowed category names, comma-separated")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        images = load_dataset(args.path, categories=args.categories)
    except ConfigError as exc:
        sys.stderr.write(f"labelled set refused: {exc}\n")
        return 2
    sys.stdout.write(json.dumps(summary(images), indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
