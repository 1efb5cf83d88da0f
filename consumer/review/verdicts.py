"""A reviewer's verdict, made durable: the final decision first, then the label.

Order matters for what a crash leaves behind. The corrected decision goes to the action's
topic before the verdict goes to the labels topic, and the queue drops an item only once its
verdict is read back from the labels topic. A crash between the two leaves the item in the
queue; the next verdict on it produces the decision again (same key, the same or a newer
answer), so downstream never misses a final answer and never sees a label without one.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import datetime

from consumer.contract.events import (
    Action,
    Decision,
    HumanReview,
    OverriddenDecision,
    Reason,
    ReviewClaim,
    ReviewVerdict,
)
from consumer.contract.headers import PREFIX, Headers, decision_headers
from consumer.errors import ConfigError, DeliveryError
from consumer.moderation.decide import EXEMPLAR_RULE
from consumer.moderation.policy import THRESHOLD_RULE
from consumer.moderation.watch import LivePolicies
from consumer.pipeline.sink import Sink
from consumer.runtime.retry import RetryPolicy

logger = logging.getLogger(__name__)

HUMAN_REVIEW_RULE = "human_review"
# A claim is worth a quick try, never a slow page.
CLAIM_DELIVERY = RetryPolicy(initial_s=0.05, max_s=0.2, max_attempts=2, deadline_s=1.0)
CLAIM_DEADLINE_S = 2.0
# Rules that fire because the image looks like a category; the others (prototype, pool)
# fire because the model's label is not to be trusted, and lean to its allow.
_SUSPECTING_RULES = frozenset({THRESHOLD_RULE, EXEMPLAR_RULE})


@dataclass(frozen=True)
class Leaning:
    """Where the model leaned on an item it sent to review."""

    action: Action
    category: str | None


@dataclass(frozen=True)
class VerdictChoice:
    """What the reviewer chose: allow, or block (optionally naming the category)."""

    action: Action
    category: str | None = None

    def __post_init__(self) -> None:
        if self.action is Action.REVIEW:
            raise ValueError("a verdict is allow or block; review is what the model said")
        if self.action is Action.ALLOW and self.category is not None:
            raise ValueError("a category names what was blocked; an allow has none")


def leaning(decision: Decision) -> Leaning:
    """The model leaned to block when a category threshold or an exemplar bank sent the item
    to review (it suspects that category), and to allow when only its trust in its own label
    did (a low prototype similarity or a disagreeing pool, on an image it would allow)."""
    suspecting = [reason for reason in decision.reasons if reason.rule in _SUSPECTING_RULES]
    if suspecting:
        # The most severe suspicion; among equals, the first the decision lists.
        strongest = max(suspecting, key=lambda r: r.action.severity)
        return Leaning(Action.BLOCK, strongest.category)
    first = decision.reasons[0].category if decision.reasons else None
    return Leaning(Action.ALLOW, first)


def build_verdict(
    decision: Decision, choice: VerdictChoice, reviewer_id: str, reviewed_at: datetime
) -> ReviewVerdict:
    """The labels-topic record of ``choice`` on ``decision``; ConfigError without a source
    (a decision from before decisions carried their input record cannot be labelled)."""
    if decision.source is None:
        raise ConfigError(
            f"decision {decision.event_id} names no input record; only decisions produced by "
            "this version of the consumer can be reviewed"
        )
    lean = leaning(decision)
    return ReviewVerdict(
        event_id=decision.event_id,
        tenant_id=decision.tenant_id,
        action=choice.action,
        category=choice.category,
        reviewer_id=reviewer_id,
        reviewed_at=reviewed_at,
        decided_at=decision.decided_at,
        source=decision.source,
        model=decision.model,
        model_action=lean.action,
        model_category=lean.category,
        overturned=choice.action is not lean.action,
    )


def corrected_decision(
    decision: Decision, choice: VerdictChoice, reviewer_id: str, reviewed_at: datetime
) -> Decision:
    """The reviewer's decision on the event, carrying the model's decision it replaces."""
    return decision.model_copy(
        update={
            "action": choice.action,
            "reasons": [
                Reason(rule=HUMAN_REVIEW_RULE, action=choice.action, category=choice.category)
            ],
            "decided_at": reviewed_at,
            "human_review": HumanReview(
                reviewer_id=reviewer_id,
                reviewed_at=reviewed_at,
                category=choice.category,
                overrides=OverriddenDecision(
                    action=decision.action,
                    reasons=decision.reasons,
                    policy_version=decision.policy_version,
                    decided_at=decision.decided_at,
                ),
            ),
        }
    )


class LabelNotRecorded(DeliveryError):
    """The final decision went out, its label did not: record ``verdict`` again (the same
    verdict, so downstream never sees two different final answers from this page)."""

    def __init__(self, message: str, verdict: ReviewVerdict) -> None:
        super().__init__(message)
        self.verdict = verdict


class VerdictPublisher:
    """Produces a verdict's final decision and its label, each acknowledged (acks=all)."""

    def __init__(
        self,
        sink: Sink,
        policies: LivePolicies,
        labels_topic: str,
        claims_topic: str | None = None,
    ) -> None:
        self._sink = sink
        self._policies = policies
        self._labels_topic = labels_topic
        self._claims_topic = claims_topic

    async def publish(
        self,
        decision: Decision,
        choice: VerdictChoice,
        reviewer_id: str,
        reviewed_at: datetime,
        headers: Headers = (),
    ) -> ReviewVerdict:
        """Produce the final decision (carrying ``headers``, those of the review record, as
        the model's decision carried the input's), then the label."""
        verdict = build_verdict(decision, choice, reviewer_id, reviewed_at)
        final = corrected_decision(decision, choice, reviewer_id, reviewed_at)
        rules = self._policies.current.rules_for(decision.tenant_id)
        topic = rules.topics.for_action(choice.action)
        key = decision.event_id.encode()
        await self._sink.deliver(
            topic,
            key,
            final.model_dump_json().encode(),
            [*decision_headers(headers, final), (PREFIX + "reviewer", reviewer_id.encode())],
        )
        try:
            await self.publish_label(verdict)
        except DeliveryError as exc:
            raise LabelNotRecorded(str(exc), verdict) from exc
        logger.info(
            "verdict %s by %s, final decision produced to %s",
            choice.action.value,
            reviewer_id,
            topic,
            extra={
                "event_id": decision.event_id,
                "tenant": decision.tenant_id,
                "topic": topic,
                "action": choice.action.value,
                "overturned": verdict.overturned,
            },
        )
        return verdict

    async def publish_label(self, verdict: ReviewVerdict) -> None:
        """Produce ``verdict`` to the labels topic (and nothing else)."""
        await self._sink.deliver(
            self._labels_topic,
            verdict.event_id.encode(),
            verdict.model_dump_json().encode(),
            [("content-type", b"application/json"), (PREFIX + "schema", b"review_verdict/1.0")],
        )

    async def publish_claim(self, claim: ReviewClaim) -> None:
        """Tell the other replicas who has the item open. Claims only steer reviewers apart:
        one that cannot be produced soon is given up (logged), never waited for."""
        if self._claims_topic is None:
            return
        try:
            async with asyncio.timeout(CLAIM_DEADLINE_S):
                await self._sink.deliver(
                    self._claims_topic,
                    claim.event_id.encode(),
                    claim.model_dump_json().encode(),
                    [
                        ("content-type", b"application/json"),
                        (PREFIX + "schema", b"review_claim/1.0"),
                    ],
                    retry=CLAIM_DELIVERY,
                )
        except (DeliveryError, TimeoutError):
            logger.warning(
                "claim not shared with other replicas",
                exc_info=True,
                extra={"event_id": claim.event_id, "tenant": claim.tenant_id},
            )
