"""Verdict → labels: which verdicts teach the heads what, and the held-out split."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from consumer.contract.events import Action, ModelRef, ReviewVerdict, SourceRecord
from consumer.moderation.heads import HeadCategory, HeadsDescriptor
from training.feedback.labels import HeadCatalog, Skipped, VerdictLabel, catalog_of, label_of
from training.feedback.split import TEST, TRAIN, split_of

CATALOG = HeadCatalog(
    builtin=frozenset({"safe", "sexual_explicit", "suggestive"}),
    heads=(
        HeadCategory(name="qr_solicitation"),
        HeadCategory(name="contact_overlay", tenant="marketplace"),
        HeadCategory(name="payment_card", tenant="tickets"),
    ),
)


def verdict(
    action: Action, category: str | None, tenant: str = "marketplace", event_id: str = "e-1"
) -> ReviewVerdict:
    now = datetime(2026, 12, 1, tzinfo=UTC)
    return ReviewVerdict(
        event_id=event_id,
        tenant_id=tenant,
        action=action,
        category=category,
        reviewer_id="rev-1",
        reviewed_at=now,
        decided_at=now,
        source=SourceRecord(topic="in", partition=0, offset=3, timestamp_ms=None, key_b64=None),
        model=ModelRef(name="moderation", version="1"),
        model_action=Action.REVIEW,
        model_category=None,
        overturned=False,
    )


@pytest.mark.parametrize("action", [Action.ALLOW, Action.BLOCK])
def test_a_tenant_head_named_is_a_positive_owned_by_the_tenant(action: Action) -> None:
    assert label_of(verdict(action, "contact_overlay"), CATALOG) == VerdictLabel(
        frozenset({"contact_overlay"}), "marketplace"
    )


def test_a_platform_head_named_is_a_positive_owned_by_the_platform() -> None:
    # The trainer needs one owner per category: the platform's heads have none.
    assert label_of(verdict(Action.BLOCK, "qr_solicitation"), CATALOG) == VerdictLabel(
        frozenset({"qr_solicitation"}), None
    )


@pytest.mark.parametrize("category", [None, "safe", "suggestive"])
def test_allow_without_a_head_is_a_negative_for_every_head(category: str | None) -> None:
    assert label_of(verdict(Action.ALLOW, category), CATALOG) == VerdictLabel(
        frozenset(), "marketplace"
    )


@pytest.mark.parametrize(
    ("category", "reason"),
    [
        (None, "block without a category"),
        ("sexual_explicit", "block for built-in category 'sexual_explicit'"),
    ],
)
def test_a_block_that_names_no_head_says_nothing_about_the_heads(
    category: str | None, reason: str
) -> None:
    found = label_of(verdict(Action.BLOCK, category), CATALOG)
    assert isinstance(found, Skipped)
    assert found.reason.startswith(reason)


@pytest.mark.parametrize("category", ["payment_card", "retired_head"])
def test_another_tenants_head_or_an_unknown_category_is_skipped(category: str) -> None:
    found = label_of(verdict(Action.BLOCK, category), CATALOG)
    assert isinstance(found, Skipped)
    assert "neither a built-in category nor a head tenant marketplace sees" in found.reason


def test_the_split_is_deterministic_and_holds_out_about_three_in_ten() -> None:
    ids = [f"event-{n}" for n in range(2000)]
    first = [split_of(i) for i in ids]
    assert first == [split_of(i) for i in ids]
    assert set(first) == {TRAIN, TEST}
    assert 0.26 < first.count(TEST) / len(ids) < 0.34
    # Known values: the split must not change between releases (a rebuild keeps sides).
    assert [split_of(f"event-{n}") for n in range(8)] == [
        TRAIN,
        TRAIN,
        TEST,
        TRAIN,
        TEST,
        TRAIN,
        TRAIN,
        TRAIN,
    ]
    assert split_of("e", fraction=0.0) == TRAIN
    assert split_of("e", fraction=1.0) == TEST


def test_the_catalog_is_the_live_heads_version_and_the_backbones_classes(tmp_path: Path) -> None:
    (tmp_path / "bb").mkdir()
    (tmp_path / "bb" / "config.pbtxt").write_text(
        'name: "bb"\nparameters { key: "modstream.class_names" '
        'value: { string_value: "safe,sexual_explicit" } }\n'
    )
    for version, names in (("1", ("qr_solicitation",)), ("2", ("qr_solicitation", "new_head"))):
        folder = tmp_path / "heads" / version
        folder.mkdir(parents=True)
        descriptor = HeadsDescriptor(
            heads_model="heads",
            version=version,
            backbone="bb",
            backbone_sha256="0" * 64,
            embedding_dim=4,
            categories=tuple(HeadCategory(name=n) for n in names),
            trained_at=datetime(2026, 12, 1, tzinfo=UTC),
        )
        (folder / "heads.json").write_text(descriptor.model_dump_json())
    newest = catalog_of(tmp_path, "bb", "heads", "moderation")
    assert newest.builtin == {"safe", "sexual_explicit"}
    assert newest.heads_version == "2"
    assert [h.name for h in newest.heads] == ["qr_solicitation", "new_head"]
    (tmp_path / "moderation").mkdir()
    (tmp_path / "moderation" / "config.pbtxt").write_text(
        'name: "moderation"\nparameters { key: "modstream.heads_version" '
        'value: { string_value: "1" } }\n'
    )
    live = catalog_of(tmp_path, "bb", "heads", "moderation")
    assert live.heads_version == "1"
    assert [h.name for h in live.heads] == ["qr_solicitation"]
