"""Every event's one outcome: a decision on its action's topic, or a dead letter.

``decision`` is the pipeline's single decide step: it matches the tenant's exemplar banks,
calls ``decide_event`` (thresholds, then prototype and pool escalation) and produces the
result. Both methods return only once the broker acknowledged the record (acks=all); the
engine then completes the event's offset.
"""

from __future__ import annotations

import base64
import logging
from datetime import UTC, datetime

from consumer.banks.store import BankSet
from consumer.contract.events import (
    Action,
    DeadLetter,
    Decision,
    ImageEvent,
    ShadowComparison,
    SourceRecord,
)
from consumer.contract.headers import dead_letter_headers, decision_headers
from consumer.errors import DeliveryError, EventRejected
from consumer.inference.model_check import ModelSpec
from consumer.inference.results import Scores
from consumer.moderation.decide import StageTimes, decide_event
from consumer.moderation.heads import HeadsDescriptor, LiveHeads
from consumer.moderation.policy import ModelCategories, PolicySet
from consumer.pipeline.ports import Pending, Prepared, Record
from consumer.pipeline.sink import Sink
from consumer.pipeline.source import coordinates
from consumer.runtime.metrics import Metrics, TenantLabels
from consumer.runtime.retry import RetryPolicy

logger = logging.getLogger(__name__)

# Room left in a produce request for the dead letter's envelope around the original bytes.
DEAD_LETTER_ENVELOPE_BYTES = 64 * 1024
# A shadow comparison is worth a few tries, never a stalled partition.
SHADOW_DELIVERY = RetryPolicy(initial_s=0.1, max_s=1.0, max_attempts=3, deadline_s=5.0)


class KafkaOutcomes:
    """Decides under the live policies and produces decisions and dead letters."""

    def __init__(
        self,
        *,
        sink: Sink,
        spec: ModelSpec,
        policies: PolicySet,
        banks: BankSet,
        dead_letter_topic: str,
        max_request_size: int,
        metrics: Metrics,
        tenant_labels: TenantLabels,
        heads: LiveHeads | None = None,
        shadow_topic: str | None = None,
    ) -> None:
        self._heads = heads
        self._shadow_topic = shadow_topic
        self._sink = sink
        self._spec = spec
        self._policies = policies
        self._banks = banks
        self._dead_letter_topic = dead_letter_topic
        self._max_request_size = max_request_size
        self._metrics = metrics
        self._tenant_labels = tenant_labels

    def model_categories(self, heads: HeadsDescriptor | None = None) -> ModelCategories:
        """What the served model (with ``heads``, default: those serving now) gives policies."""
        if heads is None and self._heads is not None:
            heads = self._heads.serving or self._heads.current
        return ModelCategories(
            self._spec.class_names,
            self._spec.prototype_categories,
            {h.name: h.tenant for h in heads.categories} if heads is not None else {},
        )

    def check_heads(self, heads: HeadsDescriptor) -> None:
        """Raise PolicyError when the live policies cannot take ``heads``' categories."""
        self._policies.check_model(self.model_categories(heads))

    def replace_policies(self, policies: PolicySet) -> None:
        """Decide every event from now on with ``policies`` (already validated)."""
        self._policies = policies
        if self._heads is not None:
            self._heads.recheck()
        self._tenant_labels.pin(policies.tenants)
        self._metrics.policy_info.info({"version": policies.version})

    async def decision(self, item: Prepared, scores: Scores, batch_wait_s: float) -> None:
        event, record = item.ready.event, item.pending.record
        exemplar = None
        if self._banks:
            limits = self._policies.rules_for(event.tenant_id).exemplars
            exemplar = self._banks.match(
                event.tenant_id,
                item.ready.pdq,
                scores.embedding,
                limits.max_pdq_distance,
                limits.min_similarity,
            )
            if exemplar is not None:
                self._metrics.exemplar_matches.labels(exemplar.bank_id, exemplar.by).inc()
        times = StageTimes(
            consumed_at=item.pending.consumed_at,
            decode_s=item.ready.image.decode_seconds,
            batch_wait_s=batch_wait_s,
            inference_s=scores.seconds,
        )
        routed = decide_event(
            event,
            scores.probs,
            self._spec,
            self._policies,
            times,
            decided_at=datetime.now(UTC),
            exemplar=exemplar,
            pool_entropy=scores.pool_entropy,
            prototype_similarity=scores.prototype_similarity,
            heads=scores.heads,
            head_scores=scores.head_scores,
            source=source_of(record),
        )
        if scores.heads is not None and scores.head_scores is not None:
            for head, score in zip(scores.heads.categories, scores.head_scores, strict=True):
                self._metrics.head_scores.labels(scores.heads.version, head.name).observe(score)
        decision = routed.decision
        await self._sink.deliver(
            routed.topic,
            event.event_id.encode(),
            decision.model_dump_json().encode(),
            decision_headers(record.headers, decision),
        )
        if scores.shadow is not None and self._shadow_topic is not None:
            # After the live decision is delivered: the shadow informs, it never holds up,
            # fails or changes the live outcome.
            try:
                candidate = decide_event(
                    event,
                    scores.probs,
                    self._spec,
                    self._policies,
                    times,
                    decided_at=decision.decided_at,
                    exemplar=exemplar,
                    pool_entropy=scores.pool_entropy,
                    prototype_similarity=scores.prototype_similarity,
                    heads=scores.shadow.heads,
                    head_scores=scores.shadow.head_scores,
                )
                await self._compare(decision, candidate.decision, scores.shadow.heads, scores.heads)
            except Exception:
                self._metrics.shadow_comparisons.labels(scores.shadow.heads.version, "lost").inc()
                logger.warning("shadow comparison lost", exc_info=True, extra=coordinates(record))
        action = decision.action
        category = (decision.reasons[0].category if decision.reasons else None) or "none"
        tenant = self._tenant_labels.label(event.tenant_id)
        self._metrics.decisions.labels(action.value, tenant, category).inc()
        self._metrics.end_to_end_seconds.observe(
            max(0.0, (datetime.now(UTC) - event.created_at).total_seconds())
        )
        # Blocks and reviews are what operators look for; allows would drown them.
        logger.log(
            logging.DEBUG if action is Action.ALLOW else logging.INFO,
            "decided %s, produced to %s",
            action.value,
            routed.topic,
            extra={
                "event_id": event.event_id,
                "tenant": event.tenant_id,
                "action": action.value,
                "reason": category,
                **coordinates(record),
            },
        )

    async def _deliver_letter(self, letter: DeadLetter, record: Record) -> None:
        await self._sink.deliver(
            self._dead_letter_topic,
            record.key,
            letter.model_dump_json().encode(),
            dead_letter_headers(record.headers, letter),
        )

    async def _compare(
        self,
        live: Decision,
        candidate: Decision,
        heads: HeadsDescriptor,
        live_heads: HeadsDescriptor | None,
    ) -> None:
        """Produce the shadow comparison; the shadow topic only informs, it routes nothing."""
        names = set(heads.names())
        live_names = set(live_heads.names()) if live_heads is not None else set()
        comparison = ShadowComparison(
            event_id=live.event_id,
            tenant_id=live.tenant_id,
            live_heads_version=live.model.heads_version,
            shadow_heads_version=heads.version,
            live_action=live.action,
            shadow_action=candidate.action,
            live_categories=[r.category for r in live.reasons if r.category],
            shadow_categories=[r.category for r in candidate.reasons if r.category],
            live_head_scores={k: v for k, v in live.scores.items() if k in live_names},
            shadow_scores={k: v for k, v in candidate.scores.items() if k in names},
            compared_at=datetime.now(UTC),
        )
        result = "agree" if live.action is candidate.action else "differ"
        self._metrics.shadow_comparisons.labels(heads.version, result).inc()
        if self._shadow_topic is not None:
            try:
                await self._sink.deliver(
                    self._shadow_topic,
                    live.event_id.encode(),
                    comparison.model_dump_json().encode(),
                    [("content-type", b"application/json")],
                    retry=SHADOW_DELIVERY,
                )
            except DeliveryError as exc:
                self._metrics.shadow_comparisons.labels(heads.version, "lost").inc()
                logger.warning(
                    "shadow comparison not delivered: %s", exc, extra={"topic": self._shadow_topic}
                )

    async def dead_letter(
        self, pending: Pending, rejection: EventRejected, event: ImageEvent | None
    ) -> None:
        record = pending.record
        value = record.value
        # Too large to fit beside its envelope: the coordinates still lead to the original.
        original = (
            base64.b64encode(value).decode()
            if value and len(value) * 4 // 3 + DEAD_LETTER_ENVELOPE_BYTES < self._max_request_size
            else None
        )
        letter = DeadLetter(
            reason_code=rejection.code,
            reason=rejection.message,
            event_id=event.event_id if event else None,
            tenant_id=event.tenant_id if event else None,
            source=source_of(record),
            original_value_b64=original,
            failed_at=datetime.now(UTC),
        )
        try:
            await self._deliver_letter(letter, record)
        except DeliveryError as exc:
            if exc.retriable or letter.original_value_b64 is None:
                raise
            # The broker refuses the letter's size: send it without the original, whose
            # coordinates are in the letter.
            logger.warning("dead letter too large with its original; sending it without")
            letter = letter.model_copy(update={"original_value_b64": None})
            await self._deliver_letter(letter, record)
        self._metrics.dead_letters.labels(rejection.code).inc()
        logger.info(
            "dead-lettered: %s",
            rejection.message,
            extra={
                "reason": rejection.code,
                "event_id": letter.event_id,
                "tenant": letter.tenant_id,
                **coordinates(record),
            },
        )


def source_of(record: Record) -> SourceRecord:
    """The coordinates of ``record``, which a decision or dead letter carries."""
    return SourceRecord(
        topic=record.topic,
        partition=record.partition,
        offset=record.offset,
        timestamp_ms=record.timestamp,
        key_b64=base64.b64encode(record.key).decode() if record.key is not None else None,
    )
