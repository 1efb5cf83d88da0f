"""The review queue's order and settling, and what a verdict produces."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from consumer.contract.events import (
    Action,
    Decision,
    ImageEvent,
    Reason,
    ReviewClaim,
    SourceRecord,
)
from consumer.errors import ConfigError
from consumer.moderation.decide import EXEMPLAR_RULE, PROTOTYPE_RULE
from consumer.review.metrics import ReviewMetrics
from consumer.review.queue import RecordAt, ReviewQueue
from consumer.review.verdicts import (
    VerdictChoice,
    build_verdict,
    corrected_decision,
    leaning,
)
from consumer.runtime.metrics import TenantLabels
from tests.support.review import review_decision

T0 = datetime(2026, 1, 1, tzinfo=UTC)
SOURCE = SourceRecord(topic="in", partition=1, offset=7, timestamp_ms=None, key_b64=None)


def _decision(
    event_id: str, tenant: str = "acme", minutes: int = 0, suspect: str | None = "x"
) -> Decision:
    event = ImageEvent(
        event_id=event_id, tenant_id=tenant, image_url="https://example.com/a.jpg", created_at=T0
    )
    return review_decision(
        event, SOURCE, suspect=suspect, decided_at=T0 + timedelta(minutes=minutes)
    )


def test_oldest_decision_first_whatever_the_arrival_order() -> None:
    queue = ReviewQueue(max_held_per_tenant=10)
    for event_id, minutes in (("c", 3), ("a", 1), ("b", 2)):
        assert queue.add(_decision(event_id, minutes=minutes), RecordAt("r", 0, minutes))
    assert [e.event_id for e in queue.entries("acme")] == ["a", "b", "c"]
    assert queue.neighbours("acme", "b") == ("a", "c")
    assert queue.neighbours("acme", "a") == (None, "b")
    assert queue.oldest_age_s("acme", T0 + timedelta(minutes=11)) == 600
    assert queue.entries("other") == []
    assert queue.depth("other") == 0


def test_a_verdict_settles_for_good_even_before_its_decision_is_read() -> None:
    queue = ReviewQueue(max_held_per_tenant=10)
    first = _decision("a")
    queue.add(first, RecordAt("r", 0, 0))
    verdict = build_verdict(first, VerdictChoice(Action.ALLOW), "rita", T0)
    assert queue.settle(verdict) is not None
    assert queue.depth("acme") == 0
    # Read again (a restarted feed, another replica's copy): it does not come back.
    assert not queue.add(first, RecordAt("r", 0, 0))
    early = _decision("b")
    queue.settle(build_verdict(early, VerdictChoice(Action.ALLOW), "rita", T0))
    assert not queue.add(early, RecordAt("r", 0, 1))
    # The same event of another tenant is another item.
    assert queue.add(_decision("a", tenant="tickets"), RecordAt("r", 0, 2))


def test_past_the_memory_cap_entries_keep_only_their_coordinates() -> None:
    queue = ReviewQueue(max_held_per_tenant=2)
    for index in range(4):
        queue.add(_decision(f"e{index}", minutes=index), RecordAt("r", 0, index))
    held = [entry.decision is not None for entry in queue.entries("acme")]
    assert held == [True, True, False, False]
    assert queue.depth("acme") == 4
    queue.settle(build_verdict(_decision("e0"), VerdictChoice(Action.ALLOW), "r", T0))
    queue.add(_decision("e9", minutes=9), RecordAt("r", 0, 9))
    assert [e.decision is not None for e in queue.entries("acme")] == [True, False, False, True]


def test_leaning_follows_the_rule_that_sent_the_item() -> None:
    assert leaning(_decision("a", suspect="suggestive")).action is Action.BLOCK
    assert leaning(_decision("a", suspect="suggestive")).category == "suggestive"
    pool = leaning(_decision("a", suspect=None))
    assert (pool.action, pool.category) == (Action.ALLOW, "safe")
    bank = _decision("a").model_copy(
        update={
            "reasons": [
                Reason(rule=PROTOTYPE_RULE, action=Action.REVIEW, category="safe"),
                Reason(rule=EXEMPLAR_RULE, action=Action.REVIEW, category="logo", bank_id="b"),
            ]
        }
    )
    assert leaning(bank).category == "logo"


def test_a_verdict_carries_the_model_decision_it_replaces() -> None:
    decision = _decision("a", suspect="suggestive")
    choice = VerdictChoice(Action.ALLOW)
    at = T0 + timedelta(hours=1)
    final = corrected_decision(decision, choice, "rita", at)
    assert final.action is Action.ALLOW
    assert [(r.rule, r.action) for r in final.reasons] == [("human_review", Action.ALLOW)]
    assert final.human_review is not None
    assert final.human_review.overrides.action is Action.REVIEW
    assert final.human_review.overrides.reasons == decision.reasons
    assert final.scores == decision.scores
    assert final.source == decision.source
    verdict = build_verdict(decision, choice, "rita", at)
    assert verdict.overturned
    assert verdict.model_category == "suggestive"
    confirmed = build_verdict(decision, VerdictChoice(Action.BLOCK, "suggestive"), "rita", at)
    assert not confirmed.overturned


def test_impossible_verdicts_are_refused() -> None:
    with pytest.raises(ValueError, match="allow or block"):
        VerdictChoice(Action.REVIEW)
    with pytest.raises(ValueError, match="category"):
        VerdictChoice(Action.ALLOW, "suggestive")
    legacy = _decision("a").model_copy(update={"source": None})
    with pytest.raises(ConfigError, match="input record"):
        build_verdict(legacy, VerdictChoice(Action.ALLOW), "rita", T0)


def test_queue_gauges_fold_tenants_past_the_label_cap() -> None:
    metrics = ReviewMetrics(TenantLabels(max_labels=1))
    queue = ReviewQueue(max_held_per_tenant=10)
    queue.add(_decision("a", tenant="acme", minutes=0), RecordAt("r", 0, 0))
    queue.add(_decision("b", tenant="beta", minutes=5), RecordAt("r", 0, 1))
    queue.add(_decision("c", tenant="gamma", minutes=1), RecordAt("r", 0, 2))
    metrics.observe_queue(queue, T0 + timedelta(minutes=10))
    depth = metrics.registry.get_sample_value
    assert depth("modstream_review_queue_depth", {"tenant": "acme"}) == 1
    assert depth("modstream_review_queue_depth", {"tenant": "other"}) == 2
    assert depth("modstream_review_oldest_age_seconds", {"tenant": "other"}) == 540


def test_claims_send_other_reviewers_elsewhere_until_they_expire() -> None:
    queue = ReviewQueue(max_held_per_tenant=10)
    for index, event_id in enumerate(("a", "b", "c")):
        queue.add(_decision(event_id, minutes=index), RecordAt("r", 0, index))
    now = T0 + timedelta(hours=1)
    until = now + timedelta(minutes=2)
    queue.claim(ReviewClaim(event_id="a", tenant_id="acme", reviewer_id="rita", expires_at=until))
    assert queue.next_for("acme", "rita", now) == "a"  # one's own claim is no obstacle
    assert queue.next_for("acme", "tina", now) == "b"
    assert queue.next_for("acme", "tina", now, after="b") == "c"
    assert queue.next_for("acme", "tina", until) == "a"  # expired
    claim = queue.claimant("acme", "a", now)
    assert claim is not None
    assert claim.reviewer_id == "rita"
    queue.settle(build_verdict(_decision("a"), VerdictChoice(Action.ALLOW), "rita", now))
    assert queue.claimant("acme", "a", now) is None
    # A claim read after the verdict does not come back either.
    queue.claim(ReviewClaim(event_id="a", tenant_id="acme", reviewer_id="rita", expires_at=until))
    assert queue.claimant("acme", "a", now) is None
