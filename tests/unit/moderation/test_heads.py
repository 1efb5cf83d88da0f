"""Heads on the consumer side: tenant visibility, policy ownership, the live-heads gate, the
ensemble's version pinning, and the shadow report."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from consumer.contract.events import Action, ShadowComparison
from consumer.errors import ModelMismatch, PolicyError
from consumer.inference import ensemble
from consumer.moderation.heads import HeadCategory, HeadsDescriptor, LiveHeads, check_unique
from consumer.moderation.policy import ModelCategories, TopicRoutes, compile_policy, parse_policy
from consumer.moderation.shadow_report import summarize, wilson
from tests.support.paths import TRITON_REPO

SHA = "a" * 64
CLASSES = ("safe", "sexual_explicit")


def descriptor(version: str = "1", sha: str = SHA) -> HeadsDescriptor:
    return HeadsDescriptor(
        heads_model="heads",
        version=version,
        backbone="nsfw_mobilenet_v2",
        backbone_sha256=sha,
        embedding_dim=4,
        categories=(
            HeadCategory(name="qr_solicitation"),
            HeadCategory(name="payment_card", tenant="tickets"),
        ),
        trained_at=datetime(2026, 1, 1, tzinfo=UTC),
    )


def test_a_tenant_sees_platform_heads_and_its_own_only() -> None:
    heads = descriptor()
    assert heads.visible_to("tickets") == [0, 1]
    assert heads.visible_to("marketplace") == [0]


def test_policies_may_name_platform_heads_anywhere_and_own_heads_only_under_the_owner() -> None:
    categories = ModelCategories(CLASSES, (), {"qr_solicitation": None, "payment_card": "tickets"})
    good = compile_policy(
        parse_policy(
            "default:\n  thresholds:\n    qr_solicitation: {block: 0.9}\n"
            "tenants:\n  tickets:\n    thresholds:\n      payment_card: {block: 0.8}\n",
            "test",
        ),
        TopicRoutes("a", "r", "b"),
    )
    good.check_model(categories)
    for text, who in (
        ("default:\n  thresholds:\n    payment_card: {block: 0.9}\n", "the default policy"),
        (
            "default: {}\ntenants:\n  other:\n    thresholds:\n      payment_card: {block: 0.8}\n",
            "tenant other",
        ),
    ):
        bad = compile_policy(parse_policy(text, "test"), TopicRoutes("a", "r", "b"))
        with pytest.raises(PolicyError, match=f"{who} names heads of another tenant"):
            bad.check_model(categories)


def test_live_heads_refuse_another_backbone_and_recheck_after_a_policy_change() -> None:
    allowed = {"ok": False}
    changes: list[str] = []

    def check(heads: HeadsDescriptor) -> None:
        if not allowed["ok"]:
            raise PolicyError("policy cannot take these heads")

    live = LiveHeads(SHA, CLASSES, check, lambda heads: changes.append(heads.version))
    with pytest.raises(ModelMismatch, match="trained on backbone"):
        live.accept(descriptor(sha="b" * 64).model_dump_json().encode())
    raw = descriptor().model_dump_json().encode()
    with pytest.raises(PolicyError):
        live.accept(raw)
    allowed["ok"] = True
    assert live.accept(raw).version == "1"  # a refused version is checked again, not cached
    assert live.accept(descriptor("2").model_dump_json().encode()).version == "2"
    assert changes == ["1", "2"]
    with pytest.raises(ModelMismatch, match="unreadable descriptor"):
        live.accept(b"{not json")


def test_head_names_must_not_repeat_a_category() -> None:
    with pytest.raises(ValueError, match="repeats a category name"):
        check_unique([HeadCategory(name="safe")], CLASSES)
    with pytest.raises(ValueError, match="repeats a category name"):
        check_unique([HeadCategory(name="x"), HeadCategory(name="x", tenant="t")], CLASSES)


def test_pinning_the_ensemble_remembers_the_previous_version(tmp_path: Path) -> None:
    backbone = ensemble.read_config(TRITON_REPO / "nsfw_mobilenet_v2" / "config.pbtxt")
    first = ensemble.ensemble_config(backbone, "heads", "1")
    assert (ensemble.live_version(first), ensemble.previous_version(first)) == ("1", None)
    second = ensemble.pin(first, "3")
    assert (ensemble.live_version(second), ensemble.previous_version(second)) == ("3", "1")
    assert ensemble.heads_step(second).model_version == 3
    # What is written parses back to the same config, with the backbone's parameters.
    path = tmp_path / "config.pbtxt"
    path.write_text(ensemble.render(second))
    again = ensemble.read_config(path)
    assert again == second
    assert again.parameters["modstream.class_names"].string_value.startswith("safe_drawing")
    assert ensemble.from_json(ensemble.as_json(second)) == second


def test_the_shadow_report_counts_agreement_and_changes() -> None:
    def comparison(tenant: str, live: Action, shadow: Action, cats: list[str]) -> ShadowComparison:
        return ShadowComparison(
            event_id=f"e{np.random.default_rng().integers(10**9)}",
            tenant_id=tenant,
            live_heads_version="1",
            shadow_heads_version="2",
            live_action=live,
            shadow_action=shadow,
            live_categories=[],
            shadow_categories=cats,
            shadow_scores={},
            compared_at=datetime(2026, 1, 1, tzinfo=UTC),
        )

    items = [comparison("a", Action.ALLOW, Action.ALLOW, []) for _ in range(8)]
    items += [comparison("b", Action.ALLOW, Action.BLOCK, ["qr_solicitation"]) for _ in range(2)]
    report = summarize(items)
    assert report["events"] == 10
    assert report["agreement"] == 0.8
    low, high = report["agreement_95ci"]
    assert low < 0.8 < high
    assert report["action_changes_by_tenant"] == {
        "b": {"events": 2, "changed": 2, "changes": {"allow->block": 2}}
    }
    assert report["categories"] == {"qr_solicitation": {"gained": 2, "lost": 0}}


def test_wilson_matches_known_values() -> None:
    # Wilson (1927) interval for 8/10 at 95%: 0.4902 to 0.9433.
    interval = wilson(8, 10)
    assert interval is not None
    low, high = interval
    assert low == pytest.approx(0.4902, abs=1e-4)
    assert high == pytest.approx(0.9433, abs=1e-4)
    assert wilson(0, 0) is None


def test_simulate_replays_events_with_the_candidate_heads_scores() -> None:
    from consumer.moderation.simulate import ScoredEvent, simulate, with_candidate_heads

    policies = compile_policy(
        parse_policy(
            "default: {}\ntenants:\n  acme:\n    thresholds: {qr_solicitation: {block: 0.6}}\n",
            "test",
        ),
        TopicRoutes("a", "r", "b"),
    )
    live = ScoredEvent(
        event_id="e1",
        tenant_id="acme",
        scores={"safe": 0.9, "sexual_explicit": 0.1, "qr_solicitation": 0.95},
    )
    untouched = live.model_copy(update={"event_id": "e2"})
    comparison = ShadowComparison(
        event_id="e1",
        tenant_id="acme",
        live_heads_version="1",
        shadow_heads_version="2",
        live_action=Action.BLOCK,
        shadow_action=Action.ALLOW,
        live_categories=["qr_solicitation"],
        shadow_categories=[],
        live_head_scores={"qr_solicitation": 0.95},
        shadow_scores={"qr_solicitation": 0.2, "new_head": 0.99},
        compared_at=datetime(2026, 1, 1, tzinfo=UTC),
    )
    replayed, heads = with_candidate_heads([live, untouched], [comparison])
    assert heads == {"qr_solicitation", "new_head"}
    assert replayed[0].scores == {
        "safe": 0.9,
        "sexual_explicit": 0.1,
        "qr_solicitation": 0.2,
        "new_head": 0.99,
    }
    assert replayed[1] == untouched
    assert simulate(policies, [live]).by_tenant["acme"]["block"] == 1
    result = simulate(policies, replayed, heads)
    assert result.by_tenant["acme"] == {"allow": 1, "block": 1}


def test_live_heads_refuse_a_head_named_like_a_builtin_and_track_what_is_served() -> None:
    live = LiveHeads(SHA, CLASSES, lambda heads: None, lambda heads: None)
    clash = descriptor().model_copy(update={"categories": (HeadCategory(name="safe"),)})
    with pytest.raises(ModelMismatch, match="repeats a category name"):
        live.accept(clash.model_dump_json().encode())

    def refuse(heads: HeadsDescriptor) -> None:
        raise PolicyError("no")

    strict = LiveHeads(SHA, CLASSES, refuse, lambda heads: None)
    with pytest.raises(PolicyError):
        strict.accept(descriptor("7").model_dump_json().encode())
    # A refused version is still what Triton serves: new policies are judged against it.
    assert strict.serving is not None
    assert strict.serving.version == "7"
    assert strict.current is None


def test_the_shadow_report_counts_a_redelivered_event_once() -> None:
    item = ShadowComparison(
        event_id="same",
        tenant_id="t",
        live_heads_version="1",
        shadow_heads_version="2",
        live_action=Action.ALLOW,
        shadow_action=Action.ALLOW,
        live_categories=[],
        shadow_categories=[],
        shadow_scores={},
        compared_at=datetime(2026, 1, 1, tzinfo=UTC),
    )
    assert summarize([item, item, item])["events"] == 1
