"""Turn one image's class probabilities into a Decision under its tenant's policy."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import numpy as np
import numpy.typing as npt

from consumer.banks import Match
from consumer.events import Action, Decision, ImageEvent, ModelRef, Reason, Timings
from consumer.inference import ModelSpec
from consumer.policy import ExemplarSpec, PolicySet


@dataclass(frozen=True)
class StageTimes:
    """Seconds spent in each stage, and when the record was read."""

    consumed_at: datetime
    decode_s: float
    batch_wait_s: float
    inference_s: float


@dataclass(frozen=True)
class Routed:
    decision: Decision
    topic: str


EXEMPLAR_RULE = "exemplar_match"
POOL_RULE = "pool_disagreement"


def decide_event(
    event: ImageEvent,
    probs: npt.NDArray[np.float32],
    spec: ModelSpec,
    policies: PolicySet,
    times: StageTimes,
    decided_at: datetime,
    exemplar: Match | None = None,
    pool_entropy: float | None = None,
) -> Routed:
    """Score, apply the tenant's policy and pick the topic of the resulting action.

    A bank match is one more rule: the most severe of it and the thresholds decides.
    """
    scores = {name: round(float(p), 6) for name, p in zip(spec.class_names, probs, strict=True)}
    verdict = policies.decide(event.tenant_id, scores)
    reasons = list(verdict.reasons)
    if exemplar is not None:
        reasons.append(exemplar_reason(exemplar, policies.rules_for(event.tenant_id).exemplars))
        reasons.sort(key=lambda r: -r.action.severity)
    action = reasons[0].action if reasons else Action.ALLOW
    if action is Action.ALLOW and pool_entropy is not None:
        disagreement = pool_reason(
            pool_entropy, policies.rules_for(event.tenant_id).pool_max_entropy, scores
        )
        if disagreement is not None:
            reasons.append(disagreement)
            action = Action.REVIEW
    decision = Decision(
        event_id=event.event_id,
        tenant_id=event.tenant_id,
        action=action,
        scores=scores,
        reasons=reasons,
        model=ModelRef(name=spec.name, version=spec.version),
        policy_version=policies.version,
        timings=Timings(
            queue_ms=ms_between(event.created_at, times.consumed_at),
            decode_ms=round(times.decode_s * 1000, 3),
            batch_wait_ms=round(times.batch_wait_s * 1000, 3),
            inference_ms=round(times.inference_s * 1000, 3),
            total_ms=ms_between(event.created_at, decided_at),
        ),
        decided_at=decided_at,
        metadata=dict(event.metadata),
    )
    topic = policies.rules_for(event.tenant_id).topics.for_action(action)
    return Routed(decision, topic)


def pool_reason(entropy: float, limit: float | None, scores: dict[str, float]) -> Reason | None:
    """The models of the pool disagree: a person looks instead of an automatic allow."""
    if limit is None or entropy <= limit:
        return None
    return Reason(
        rule=POOL_RULE,
        action=Action.REVIEW,
        category=max(scores, key=lambda name: scores[name]),
        score=round(entropy, 6),
        threshold=limit,
    )


def exemplar_reason(match: Match, limits: ExemplarSpec) -> Reason:
    """The rule that fired: ``score`` is the distance (PDQ bits, or 1 - cosine similarity)."""
    if match.by == "pdq":
        threshold = float(limits.max_pdq_distance or 0)
    else:
        threshold = round(1.0 - (limits.min_similarity or 0.0), 6)
    return Reason(
        rule=EXEMPLAR_RULE,
        action=Action(match.action),
        category=match.label,
        score=round(match.distance, 6),
        threshold=threshold,
        bank_id=match.bank_id,
        entry_id=match.entry_id,
    )


def ms_between(start: datetime, end: datetime) -> float:
    """Milliseconds from start to end, never negative (producer clocks may run ahead)."""
    return round(max(0.0, (end - start).total_seconds() * 1000), 3)
