"""Turn one image's class probabilities into a Decision under its tenant's policy."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import numpy as np
import numpy.typing as npt

from consumer.events import Decision, ImageEvent, ModelRef, Timings
from consumer.inference import ModelSpec
from consumer.policy import PolicySet


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


def decide_event(
    event: ImageEvent,
    probs: npt.NDArray[np.float32],
    spec: ModelSpec,
    policies: PolicySet,
    times: StageTimes,
    decided_at: datetime,
) -> Routed:
    """Score, apply the tenant's policy and pick the topic of the resulting action."""
    scores = {name: round(float(p), 6) for name, p in zip(spec.class_names, probs, strict=True)}
    verdict = policies.decide(event.tenant_id, scores)
    decision = Decision(
        event_id=event.event_id,
        tenant_id=event.tenant_id,
        action=verdict.action,
        scores=scores,
        reasons=list(verdict.reasons),
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
    topic = policies.rules_for(event.tenant_id).topics.for_action(verdict.action)
    return Routed(decision, topic)


def ms_between(start: datetime, end: datetime) -> float:
    """Milliseconds from start to end, never negative (producer clocks may run ahead)."""
    return round(max(0.0, (end - start).total_seconds() * 1000), 3)
