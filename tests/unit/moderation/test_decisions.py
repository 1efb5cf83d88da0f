"""How the rules combine into one decision: thresholds and bank matches decide, then an
allow is escalated when the label is not to be trusted (prototype check, pool)."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pytest

from consumer.contract.events import Action, Decision, ImageEvent
from consumer.errors import PolicyError
from consumer.inference.model_check import ModelSpec
from consumer.moderation.decide import StageTimes, decide_event
from consumer.moderation.policy import (
    ModelCategories,
    PolicySet,
    TopicRoutes,
    compile_policy,
    parse_policy,
)

NAN = float("nan")
SPEC = ModelSpec(
    "m",
    "1",
    "image",
    224,
    ("safe_drawing", "safe", "sexual_explicit"),
    8,
    32,
    ("safe_drawing", "safe"),
)
POLICY = """
default:
  prototype_check: {safe_drawing: 0.5}
  thresholds:
    sexual_explicit: {review: 0.4, block: 0.8}
tenants:
  strict:
    prototype_check: {safe: 0.45}
  trusting:
    prototype_check: {safe_drawing: null}
  pooled:
    pool_max_entropy: 0.8
"""


def _policies(text: str = POLICY) -> PolicySet:
    return compile_policy(parse_policy(text, "test"), TopicRoutes("allow", "review", "block"))


def _decide(
    tenant: str,
    probs: list[float],
    similarity: list[float] | None,
    entropy: float | None = None,
) -> Decision:
    now = datetime.now(UTC)
    event = ImageEvent(event_id="e", tenant_id=tenant, image_b64="AAAA", created_at=now)
    routed = decide_event(
        event,
        np.array(probs, dtype=np.float32),
        SPEC,
        _policies(),
        StageTimes(now, 0.0, 0.0, 0.0),
        now,
        pool_entropy=entropy,
        prototype_similarity=None if similarity is None else np.array(similarity, np.float32),
    )
    return routed.decision


def _summary(decision: Decision) -> tuple[Action, list[str]]:
    return decision.action, [reason.rule for reason in decision.reasons]


def test_an_allow_far_from_its_labels_prototype_is_reviewed() -> None:
    decision = _decide("acme", [0.9, 0.1, 0.0], [0.3, 0.6, NAN])
    assert _summary(decision) == (Action.REVIEW, ["low_prototype_similarity"])
    (reason,) = decision.reasons
    assert (reason.category, reason.score, reason.threshold) == ("safe_drawing", 0.3, 0.5)
    assert decision.prototype_similarity == 0.3


def test_close_enough_or_unchecked_labels_stay_allowed() -> None:
    assert _summary(_decide("acme", [0.9, 0.1, 0.0], [0.7, 0.1, NAN])) == (Action.ALLOW, [])
    # `safe` is checked only for the strict tenant.
    assert _summary(_decide("acme", [0.1, 0.9, 0.0], [0.1, 0.2, NAN])) == (Action.ALLOW, [])
    strict = _decide("strict", [0.1, 0.9, 0.0], [0.9, 0.2, NAN])
    assert _summary(strict) == (Action.REVIEW, ["low_prototype_similarity"])
    # A tenant override of null switches the inherited check off.
    assert _summary(_decide("trusting", [0.9, 0.1, 0.0], [0.1, 0.9, NAN])) == (Action.ALLOW, [])


def test_no_prototype_for_the_label_means_no_check_and_no_similarity() -> None:
    decision = _decide("acme", [0.1, 0.5, 0.39], [0.0, NAN, NAN])
    assert _summary(decision) == (Action.ALLOW, [])
    assert decision.prototype_similarity is None
    assert _decide("acme", [0.9, 0.1, 0.0], None).prototype_similarity is None


def test_thresholds_decide_before_the_prototype_check() -> None:
    # Reviewed or blocked by a threshold: the prototype check adds nothing.
    assert _summary(_decide("acme", [0.5, 0.0, 0.5], [0.1, 0.1, NAN])) == (
        Action.REVIEW,
        ["category_threshold"],
    )
    assert _summary(_decide("acme", [0.1, 0.0, 0.9], [0.1, 0.1, NAN])) == (
        Action.BLOCK,
        ["category_threshold"],
    )


def test_prototype_and_pool_escalations_are_both_reported() -> None:
    decision = _decide("pooled", [0.9, 0.1, 0.0], [0.2, 0.9, NAN], entropy=1.2)
    assert _summary(decision) == (
        Action.REVIEW,
        ["low_prototype_similarity", "pool_disagreement"],
    )


def test_a_policy_needing_prototypes_the_model_lacks_is_refused() -> None:
    policies = _policies()
    policies.check_model(ModelCategories(SPEC.class_names, SPEC.prototype_categories))
    with pytest.raises(PolicyError, match=r"prototype_check names safe, safe_drawing.*for: none"):
        policies.check_model(ModelCategories(SPEC.class_names))
    with pytest.raises(PolicyError, match="does not produce: safe_drawing"):
        _policies().check_categories(["safe", "sexual_explicit"])


@pytest.mark.parametrize("value", [1.5, -2, "high"])
def test_out_of_range_minimums_are_refused(value: object) -> None:
    with pytest.raises(PolicyError, match=r"default\.prototype_check\.safe"):
        parse_policy(f"default:\n  prototype_check: {{safe: {value}}}\n", "test")
