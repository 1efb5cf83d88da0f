"""Labelled images and the checks every loader shares: category names, the decode check, and
one ``DatasetError`` naming every bad row (``problems`` holds them all)."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from pydantic import TypeAdapter, ValidationError

from consumer.errors import ConfigError, ImageRejected
from consumer.imaging.decode import ImageLimits, decode_image
from consumer.moderation.heads import CategoryName
from consumer.runtime.settings import ImagingSettings

logger = logging.getLogger("training.heads.data")

NEGATIVE_FOLDERS = ("none", "negative")
SPLITS = ("train", "val", "test")
MAX_LISTED = 5
"""Problems quoted in a DatasetError's message; ``problems`` holds every one."""
CHECK_SIZE = 224
"""Decode check at the backbone's input side, so JPEG draft scaling works as in the consumer."""

_CATEGORY = TypeAdapter(CategoryName)
_NAME_RULE = "a lowercase letter, then up to 63 lowercase letters, digits or '_'"


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


@dataclass
class Pending:
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


def not_allowed(name: str, allowed: frozenset[str] | None, what: str) -> str | None:
    if allowed is None or name in allowed:
        return None
    return f"{what} {name!r} is not one of the categories given ({', '.join(sorted(allowed))})"


def read_files(pending: list[Pending], problems: list[str]) -> None:
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


def finish_load(
    pending: list[Pending],
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


def _decode_problem(item: Pending, limits: ImageLimits) -> str | None:
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
