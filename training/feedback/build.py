"""Write the verdicts as a labelled set in the heads trainer's manifest form.

    OUT/manifest.jsonl      one row per verdict kept: image, label, tenant, split, group
    OUT/images/<id>.<ext>   the image bytes as read from the input record
    OUT/verdicts.jsonl      per row: the image, event id, reviewer, reviewed_at, the model's
                            leaning, overturned, the input record's coordinates (the manifest
                            has no room for them: its loader refuses unknown fields)
    OUT/build.json          counts per class and split, every skipped verdict with its reason
    OUT/metadata.json       the set's name and note, as the trainer's report quotes them

Each verdict is its own group (one image, one event); the split is a hash of the event id
(``training.feedback.split``), so a rebuild keeps every event on its side.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from consumer.contract.events import ReviewVerdict
from consumer.errors import ConfigError
from consumer.runtime.folders import replace_folder
from consumer.runtime.settings import ImagingSettings, KafkaSettings
from training.feedback.images import FoundImage, read_images
from training.feedback.labels import HeadCatalog, Skipped, VerdictLabel, label_of
from training.feedback.split import HELD_OUT_FRACTION, split_of
from training.feedback.verdicts import read_verdicts
from training.heads.manifest import MANIFEST_NAME

logger = logging.getLogger(__name__)

SIDECAR_NAME, REPORT_NAME, METADATA_NAME = "verdicts.jsonl", "build.json", "metadata.json"
NEGATIVE = "none"
"""How a negative row is counted in ``build.json``."""


class EmptySet(ConfigError):
    """No verdict became a row of the set."""


@dataclass(frozen=True)
class BuildOptions:
    out: Path
    labels_topic: str
    catalog: HeadCatalog
    tenant: str | None = None
    kafka: KafkaSettings = field(default_factory=KafkaSettings)
    imaging: ImagingSettings = field(default_factory=ImagingSettings)
    timeout_s: float = 60.0


@dataclass(frozen=True)
class Row:
    verdict: ReviewVerdict
    label: VerdictLabel
    split: str
    image: bytes


@dataclass
class Plan:
    """Verdicts sorted into rows to write and verdicts skipped, with their reasons."""

    rows: list[tuple[ReviewVerdict, VerdictLabel, str]] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    """Why each skipped verdict (by event id) is not in the set."""


def plan_rows(verdicts: Sequence[ReviewVerdict], catalog: HeadCatalog, tenant: str | None) -> Plan:
    """Label every verdict of ``tenant`` (all tenants when None) and give it its split."""
    plan = Plan()
    for verdict in verdicts:
        if tenant is not None and verdict.tenant_id != tenant:
            continue
        labelled = label_of(verdict, catalog)
        if isinstance(labelled, Skipped):
            plan.skipped[verdict.event_id] = labelled.reason
            continue
        plan.rows.append((verdict, labelled, split_of(verdict.event_id)))
    return plan


async def build_set(options: BuildOptions) -> dict[str, Any]:
    """Read the labels topic and the images, write the set; returns what ``build.json`` holds.

    Raises TopicMissing, BrokerUnavailable, TimeoutError; EmptySet when no verdict is usable.
    """
    found = await read_verdicts(options.kafka, options.labels_topic, options.timeout_s)
    plan = plan_rows(list(found.latest.values()), options.catalog, options.tenant)
    images = await read_images([v for v, _, _ in plan.rows], options.kafka, options.imaging)
    rows = []
    for (verdict, label, split), image in zip(plan.rows, images, strict=True):
        if isinstance(image, FoundImage):
            rows.append(Row(verdict, label, split, image.image))
        else:
            plan.skipped[verdict.event_id] = image.reason
    for event_id, reason in plan.skipped.items():
        logger.warning("verdict on %s skipped: %s", event_id, reason)
    report = {
        "labels_topic": options.labels_topic,
        "tenant": options.tenant,
        "catalog": options.catalog.describe(),
        "verdicts_read": len(found.latest),
        "verdicts_replaced": found.replaced,
        "records_not_verdicts": found.problems,
        "rows": len(rows),
        "held_out_fraction": HELD_OUT_FRACTION,
        "counts": counts(rows),
        "skipped": plan.skipped,
    }
    if not rows:
        raise EmptySet(
            f"no usable verdict on {options.labels_topic}"
            + (f" for tenant {options.tenant}" if options.tenant else "")
            + f" ({len(found.latest)} read, {len(plan.skipped)} skipped)"
        )
    replace_folder(options.out, lambda staging: write_set(staging, rows, report))
    return report


def counts(rows: Sequence[Row]) -> dict[str, dict[str, int]]:
    """Rows per split and class (a head's name, or ``none`` for a negative)."""
    found: dict[str, Counter[str]] = {}
    for row in rows:
        names = sorted(row.label.labels) or [NEGATIVE]
        for name in names:
            found.setdefault(row.split, Counter())[name] += 1
    return {split: dict(sorted(c.items())) for split, c in sorted(found.items())}


def write_set(folder: Path, rows: Sequence[Row], report: dict[str, Any]) -> None:
    (folder / "images").mkdir(parents=True, exist_ok=True)
    manifest, sidecar = [], []
    for row in rows:
        verdict = row.verdict
        # Event ids may hold '/' or '..': the file is named by their hash instead.
        name = hashlib.sha256(verdict.event_id.encode()).hexdigest()[:24]
        path = f"images/{name}.{image_suffix(row.image)}"
        (folder / path).write_bytes(row.image)
        labels = sorted(row.label.labels)
        manifest.append(
            {
                "image": path,
                "label": labels or None,
                "tenant": row.label.owner,
                "split": row.split,
                "group": f"event:{verdict.event_id}",
            }
        )
        sidecar.append(
            {
                "image": path,
                "event_id": verdict.event_id,
                "tenant_id": verdict.tenant_id,
                "action": verdict.action.value,
                "category": verdict.category,
                "reviewer_id": verdict.reviewer_id,
                "reviewed_at": verdict.reviewed_at.isoformat(),
                "decided_at": verdict.decided_at.isoformat(),
                "model_action": verdict.model_action.value,
                "model_category": verdict.model_category,
                "overturned": verdict.overturned,
                "model": verdict.model.model_dump(),
                "source": verdict.source.model_dump(),
            }
        )
    _write_jsonl(folder / MANIFEST_NAME, manifest)
    _write_jsonl(folder / SIDECAR_NAME, sidecar)
    (folder / REPORT_NAME).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    metadata = {
        "name": "reviewers' verdicts",
        "note": "Images reviewers gave a verdict on (the labels topic); verdicts, not a sample "
        "of traffic: they are the images the model was unsure about.",
    }
    (folder / METADATA_NAME).write_text(json.dumps(metadata, indent=2) + "\n", encoding="utf-8")


def image_suffix(data: bytes) -> str:
    """The file suffix of an image's format (``bin`` when Pillow does not know it)."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            kind = (image.format or "bin").lower()
    except (UnidentifiedImageError, OSError):
        return "bin"
    return "jpg" if kind == "jpeg" else kind


def _write_jsonl(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    text = "".join(json.dumps(row, sort_keys=True) + "\n" for row in rows)
    path.write_text(text, encoding="utf-8")
