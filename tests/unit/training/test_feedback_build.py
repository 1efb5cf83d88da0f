"""The verdicts as a set the heads trainer loads: rows, splits, counts, sidecar; and merged
with an existing set."""

from __future__ import annotations

import json
from pathlib import Path

from consumer.contract.events import Action
from tests.unit.training.test_feedback_images import jpeg
from tests.unit.training.test_feedback_labels import CATALOG, verdict
from training.feedback.build import REPORT_NAME, SIDECAR_NAME, Row, counts, plan_rows, write_set
from training.feedback.labels import VerdictLabel
from training.feedback.merge import merge_sets
from training.feedback.split import split_of
from training.heads.data import load_dataset


def test_plan_keeps_the_tenants_usable_verdicts_and_says_why_others_are_left_out() -> None:
    verdicts = [
        verdict(Action.BLOCK, "contact_overlay", event_id="pos"),
        verdict(Action.ALLOW, None, event_id="neg"),
        verdict(Action.BLOCK, None, event_id="vague"),
        verdict(Action.BLOCK, "payment_card", tenant="tickets", event_id="other-tenant"),
    ]
    plan = plan_rows(verdicts, CATALOG, "marketplace")
    assert [(v.event_id, label.labels, split) for v, label, split in plan.rows] == [
        ("pos", frozenset({"contact_overlay"}), split_of("pos")),
        ("neg", frozenset(), split_of("neg")),
    ]
    assert list(plan.skipped) == ["vague"]
    everyone = plan_rows(verdicts, CATALOG, None)
    assert [v.event_id for v, _, _ in everyone.rows] == ["pos", "neg", "other-tenant"]


def rows() -> list[Row]:
    image = jpeg()
    found = []
    for n in range(12):
        labels = frozenset({"contact_overlay"}) if n % 2 else frozenset()
        v = verdict(Action.BLOCK if labels else Action.ALLOW, None, event_id=f"ev/../{n}")
        found.append(Row(v, VerdictLabel(labels, "marketplace"), split_of(v.event_id), image))
    return found


def test_the_set_loads_in_the_trainer_with_its_labels_splits_and_groups(tmp_path: Path) -> None:
    written = rows()
    write_set(tmp_path, written, {"counts": counts(written)})
    loaded = load_dataset(tmp_path)
    assert len(loaded) == 12
    assert sorted(len(image.labels) for image in loaded) == [0] * 6 + [1] * 6
    assert {image.tenant for image in loaded} == {"marketplace"}
    assert [image.split for image in loaded] == [row.split for row in written]
    assert len({image.group for image in loaded}) == 12
    # Event ids with '/' and '..' do not leave the images folder.
    assert all(p.parent == tmp_path / "images" for p in (tmp_path / "images").iterdir())
    sidecar = [json.loads(line) for line in (tmp_path / SIDECAR_NAME).read_text().splitlines()]
    assert sidecar[0]["reviewer_id"] == "rev-1"
    assert sidecar[0]["source"] == {
        "topic": "in",
        "partition": 0,
        "offset": 3,
        "timestamp_ms": None,
        "key_b64": None,
    }
    report = json.loads((tmp_path / REPORT_NAME).read_text())
    total = sum(n for split in report["counts"].values() for n in split.values())
    assert total == 12


def test_counts_are_per_split_and_class() -> None:
    written = rows()
    found = counts(written)
    for split, classes in found.items():
        expected = sum(1 for row in written if row.split == split and row.label.labels)
        assert classes.get("contact_overlay", 0) == expected
    assert sum(sum(c.values()) for c in found.values()) == 12


def test_merging_keeps_every_sets_rows_and_file_names(tmp_path: Path) -> None:
    feedback = tmp_path / "feedback"
    write_set(feedback, rows(), {})
    base = tmp_path / "base"
    (base / "contact_overlay").mkdir(parents=True)
    (base / "none").mkdir()
    (base / "contact_overlay" / "a.jpg").write_bytes(jpeg())
    (base / "none" / "plain_photo-0001.jpg").write_bytes(jpeg())
    merge_sets([feedback, base], tmp_path / "merged")
    merged = load_dataset(tmp_path / "merged")
    assert len(merged) == 14
    manifest = (tmp_path / "merged" / "manifest.jsonl").read_text()
    # The trainer finds benign photos by file name: the name survives the merge.
    assert '"set1/none/plain_photo-0001.jpg"' in manifest
    groups = {image.group for image in merged}
    assert len(groups) == 14
    assert all(g.startswith(("set0:", "set1:")) for g in groups)
