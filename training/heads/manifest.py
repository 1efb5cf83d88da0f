"""Labelled images from a JSONL manifest (``manifest.jsonl``), one JSON object per line::

    {"image": "imgs/a.jpg", "label": "qr_solicitation", "tenant": "shop", "split": "train",
     "group": "beach"}

``image`` is a path relative to the manifest's folder (not leaving it) or an http(s) URL;
``label`` is a category name, a list of them (multi-label) or null / [] for a negative, and
must be given; ``tenant``, ``split`` (train, val or test) and ``group`` (default: the image
itself) are optional. Blank lines are allowed; other fields are not.

URLs are fetched through the service's own fetcher (``ImageFetcher``, so the egress guard
refuses private hosts).
"""

from __future__ import annotations

import asyncio
import json
import posixpath
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from consumer.errors import ImageRejected
from consumer.imaging.fetch import ImageFetcher
from consumer.moderation.heads import TenantName
from consumer.runtime.settings import ImagingSettings
from training.heads.labelled import (
    SPLITS,
    DatasetError,
    LabelledImage,
    Pending,
    category_problem,
    finish_load,
    not_allowed,
    parse_categories,
    read_files,
)

MANIFEST_NAME = "manifest.jsonl"
FETCH_CONCURRENCY = 8

_FIELDS = "image, label, tenant, split, group"


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
    pending: list[Pending] = []
    first_seen: dict[str, int] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        source = f"{path}:{number}"
        row = _parse_row(line, source, problems)
        if row is None:
            continue
        unknown = [p for name in row.label if (p := not_allowed(name, allowed, "label"))]
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
            Pending(
                source,
                row.image,
                frozenset(row.label),
                row.tenant,
                row.split,
                row.group or row.image,
                file,
            )
        )
    read_files(pending, problems)
    urls = [item for item in pending if item.path is None]
    if urls:
        asyncio.run(_fetch_all(urls, settings or ImagingSettings(), fetcher, problems))
    return finish_load(pending, problems, settings, str(path))


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


async def _fetch_all(
    items: list[Pending],
    settings: ImagingSettings,
    fetcher: ImageFetcher | None,
    problems: list[str],
) -> None:
    client = fetcher if fetcher is not None else ImageFetcher(settings)
    gate = asyncio.Semaphore(FETCH_CONCURRENCY)

    async def fetch(item: Pending) -> None:
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
