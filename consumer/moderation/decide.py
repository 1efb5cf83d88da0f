"""Turn one image's class probabilities into a Decision under its tenant's policy."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

import numpy as np
import numpy.typing as npt

from consumer.banks.store import Match
from consumer.contract.events import (
    Action,
    Decision,
    ImageEvent,
    ModelRef,
    Reason,
    SourceRecord,
    Timings,
)
from consumer.inference.model_check import ModelSpec
from consumer.moderation.heads import HeadsDescriptor
from consumer.moderation.policy import ExemplarSpec, PolicySet, TenantRules, threshold_verdict


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
PROTOTYPE_RULE = "low_prototype_similarity"


def decide_event(
    event: ImageEvent,
    probs: npt.NDArray[np.float32],
    spec: ModelSpec,
    policies: PolicySet,
    times: StageTimes,
    decided_at: datetime,
    exemplar: Match | None = None,
    pool_entropy: float | None = None,
    prototype_similarity: npt.NDArray[np.float32] | None = None,
    heads: HeadsDescriptor | None = None,
    head_scores: npt.NDArray[np.float32] | None = None,
    source: SourceRecord | None = None,
) -> Routed:
    """Score, apply the tenant's policy and pick the topic of the resulting action.

    A bank match is one more rule: the most severe of it and the thresholds decides. An
    ``allow`` is then escalated to ``review`` when the label is not to be trusted: the image
    is far from its label's prototype, or the pool of models disagrees. Head scores join the
    built-in ones for the heads the tenant may see: the platform's and its own.
    """
    rules = policies.rules_for(event.tenant_id)
    scores = {name: round(float(p), 6) for name, p in zip(spec.class_names, probs, strict=True)}
    predicted = max(scores, key=scores.__getitem__)
    similarity = predicted_similarity(prototype_similarity, list(scores).index(predicted))
    if heads is not None and head_scores is not None:
        for index in heads.visible_to(event.tenant_id):
            scores[heads.categories[index].name] = round(float(head_scores[index]), 6)
    reasons = list(threshold_verdict(rules, scores).reasons)
    if exemplar is not None:
        reasons.append(exemplar_reason(exemplar, rules.exemplars))
        reasons.sort(key=lambda r: -r.action.severity)
    action = reasons[0].action if reasons else Action.ALLOW
    if action is Action.ALLOW:
        fired = untrusted_label(rules, predicted, similarity, pool_entropy)
        if fired:
            reasons.extend(fired)
            action = Action.REVIEW
    decision = Decision(
        event_id=event.event_id,
        tenant_id=event.tenant_id,
        action=action,
        scores=scores,
        reasons=reasons,
        prototype_similarity=similarity,
        model=ModelRef(
            name=spec.name,
            version=spec.version,
            heads_model=heads.heads_model if heads is not None else None,
            heads_version=heads.version if heads is not None else None,
        ),
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
        pool_entropy=round(pool_entropy, 6) if pool_entropy is not None else None,
        source=source,
    )
    return Routed(decision, rules.topics.for_action(action))


def untrusted_label(
    rules: TenantRules, predicted: str, similarity: float | None, pool_entropy: float | None
) -> list[Reason]:
    """Why an ``allow`` of the ``predicted`` category should be reviewed instead, if at all."""
    escalations = [
        prototype_reason(similarity, predicted, rules.prototype_minimums),
        pool_reason(pool_entropy, rules.pool_max_entropy, predicted),
    ]
    return [reason for reason in escalations if reason is not None]


def prototype_reason(
    similarity: float | None, predicted: str, minimums: Mapping[str, float]
) -> Reason | None:
    """The image is unlike the labelled examples of the category the model gave it.

    ``similarity`` is the cosine to the predicted category's prototype (None: it has none).
    """
    minimum = minimums.get(predicted)
    if similarity is None or minimum is None or similarity >= minimum:
        return None
    return Reason(
        rule=PROTOTYPE_RULE,
        action=Action.REVIEW,
        category=predicted,
        score=similarity,
        threshold=minimum,
    )


def predicted_similarity(
    similarity: npt.NDArray[np.float32] | None, predicted_index: int
) -> float | None:
    """The similarity to the predicted category's prototype; None where there is none."""
    if similarity is None:
        return None
    value = float(similarity[predicted_index])
    return None if math.isnan(value) else round(value, 6)


def pool_reason(entropy: float | None, limit: float | None, predicted: str) -> Reason | None:
    """The models of the pool disagree: a person looks instead of an automatic allow."""
    if entropy is None or limit is None or entropy <= limit:
        return None
    return Reason(
        rule=POOL_RULE,
        action=Action.REVIEW,
        category=predicted,
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
