"""The moderation pipeline, read top to bottom in the order an event travels.

    getmany ─▶ admit (track offset) ─▶ prepare (parse, fetch, decode; thread pool)
         ─▶ micro-batcher ─▶ Triton (several batches in flight) ─▶ policy.decide
         ─▶ produce decision (acks=all) ─▶ offset complete ─▶ periodic commit

Anything that cannot be moderated goes to the dead-letter topic instead of a decision topic,
and its offset completes the same way. An offset is committed only once it and every earlier
offset of its partition have an acknowledged outcome, so a crash can duplicate decisions but
never lose an event.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
import numpy.typing as npt
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError
from aiokafka.structs import ConsumerRecord

from consumer.banks.store import BankSet, pdq_hash
from consumer.contract.events import (
    Action,
    DeadLetter,
    ImageEvent,
    SourceRecord,
)
from consumer.contract.parse import parse_event
from consumer.contract.reasons import ReasonCode
from consumer.errors import (
    EventRejected,
    InferenceRejected,
    InferenceUnavailable,
    ModelMismatch,
)
from consumer.imaging.decode import (
    DecodedImage,
    ImageLimits,
    decode_base64,
    decode_image,
)
from consumer.imaging.fetch import ImageFetcher
from consumer.inference.breaker import BreakerState, CircuitBreaker
from consumer.inference.triton import BatchResult, ModelSpec, TritonClassifier
from consumer.moderation.decide import StageTimes, decide_event
from consumer.moderation.policy import ModelCategories, PolicySet
from consumer.pipeline.batcher import MicroBatcher
from consumer.pipeline.offsets import OffsetTracker, Ticket
from consumer.pipeline.sink import Headers, Sink
from consumer.runtime.health import HealthState
from consumer.runtime.metrics import Metrics, TenantLabels
from consumer.runtime.settings import BatchSettings, FlowSettings, TopicSettings, TritonSettings
from consumer.runtime.signals import log_pending_tasks

logger = logging.getLogger(__name__)

HEADER_PREFIX = "modstream-"
# Resume fetching once in-flight work falls to this share of its limit, so the consumer does
# not flap between paused and resumed on every completed event.
RESUME_FRACTION = 0.8
# Room left in a produce request for the dead letter's envelope around the original bytes.
DEAD_LETTER_ENVELOPE_BYTES = 64 * 1024


@dataclass
class Pending:
    """A record read from Kafka whose outcome is not yet acknowledged."""

    record: ConsumerRecord[bytes, bytes]
    ticket: Ticket[TopicPartition]
    size: int
    consumed_at: datetime


@dataclass
class Prepared:
    pending: Pending
    event: ImageEvent
    image: DecodedImage
    batched_at: float
    pdq: bytes | None = None
    """PDQ hash of the first frame, when banks are consulted and the image could be hashed."""


@dataclass(frozen=True)
class Inferred:
    probs: npt.NDArray[np.float32]
    """Per category, the highest over the sampled frames."""
    embedding: npt.NDArray[np.float32]
    """Of the first frame."""
    seconds: float
    pool_entropy: float | None
    """Entropy of the pool's mean prediction, highest over the frames; None without a pool."""
    prototype_similarity: npt.NDArray[np.float32] | None
    """Per category, the lowest over the frames; None when the model has no prototypes."""


@dataclass(frozen=True)
class InferredRows:
    """Results for every row (frame) sent, in order."""

    probs: npt.NDArray[np.float32]
    embeddings: npt.NDArray[np.float32]
    seconds: float
    prototype_similarity: npt.NDArray[np.float32] | None
    pool_entropy: npt.NDArray[np.float32] | None


@dataclass(frozen=True)
class PipelineLimits:
    input_topic: str
    max_poll_records: int
    commit_interval_s: float
    producer_max_request_size: int


class Pipeline:
    """Consumes image events and produces one decision or dead letter per event."""

    def __init__(
        self,
        *,
        consumer: AIOKafkaConsumer,
        sink: Sink,
        classifier: TritonClassifier,
        fetcher: ImageFetcher,
        policies: PolicySet,
        topics: TopicSettings,
        batching: BatchSettings,
        flow: FlowSettings,
        triton: TritonSettings,
        image_limits: ImageLimits,
        decode_workers: int,
        limits: PipelineLimits,
        metrics: Metrics,
        max_tenant_labels: int,
        health: HealthState,
        banks: BankSet | None = None,
        pool: Sequence[TritonClassifier] = (),
    ) -> None:
        self._pool = list(pool)
        self._consumer = consumer
        self._banks = banks if banks is not None else BankSet([])
        self._sink = sink
        self._classifier = classifier
        self._fetcher = fetcher
        self._policies = policies
        self._topics = topics
        self._flow = flow
        self._triton = triton
        self._image_limits = image_limits
        self._limits = limits
        self._metrics = metrics
        self._health = health
        self._tenant_labels = TenantLabels(max_tenant_labels, policies.tenants)
        self._max_batch_size = batching.max_batch_size
        self._tracker: OffsetTracker[TopicPartition] = OffsetTracker()
        self._batcher: MicroBatcher[Prepared] = MicroBatcher(
            batching.max_batch_size, batching.max_wait_ms / 1000
        )
        self._breaker = CircuitBreaker(
            failure_threshold=triton.breaker_failure_threshold,
            open_s=triton.breaker_open_s,
            max_open_s=max(triton.breaker_open_s, triton.retry_max_backoff_s),
            on_change=self._on_breaker_change,
        )
        self._batch_slots = asyncio.Semaphore(triton.max_inflight_batches)
        self._executor = ThreadPoolExecutor(decode_workers, thread_name_prefix="modstream-decode")
        self._event_tasks: set[asyncio.Task[None]] = set()
        self._batch_tasks: set[asyncio.Task[None]] = set()
        self._inflight_events = 0
        self._inflight_bytes = 0
        self._paused = False
        self._event_finished = asyncio.Event()
        self._spec: ModelSpec | None = None

    def model_categories(self) -> ModelCategories | None:
        """What the served model gives policies, or None before the pipeline connected."""
        return _model_categories(self._spec) if self._spec is not None else None

    def replace_policies(self, policies: PolicySet) -> None:
        """Decide every event from now on with ``policies`` (already validated)."""
        self._policies = policies
        self._tenant_labels.pin(policies.tenants)
        self._metrics.policy_info.info({"version": policies.version})

    @property
    def spec(self) -> ModelSpec:
        if self._spec is None:
            raise RuntimeError("the pipeline has not connected to Triton yet")
        return self._spec

    # ── lifecycle ──────────────────────────────────────────────────────────────────────────

    async def run(self, stop: asyncio.Event) -> None:
        """Run until ``stop`` is set, then drain in-flight work within the drain deadline.

        Raises ModelMismatch / PolicyError before consuming anything when the served model or
        the policy do not fit.
        """
        try:
            self._spec = await self._classifier.connect(self._max_batch_size)
            self._policies.check_model(_model_categories(self._spec))
            for member in self._pool:
                _check_pool_member(self._spec, await member.connect(self._max_batch_size))
        except BaseException:
            # Refusing to start must still release the consumer's client resources.
            await _stop_consumer(self._consumer, self._flow.close_timeout_s)
            raise
        self._metrics.model_info.info({"name": self._spec.name, "version": self._spec.version})
        for bank_id in self._banks.use_model(self._spec.name, self._spec.version):
            logger.warning(
                "bank %s was built with another model version: matched by PDQ only; rebuild "
                "its embeddings with `modstream bank add` against %s version %s",
                bank_id,
                self._spec.name,
                self._spec.version,
            )
        self._metrics.policy_info.info({"version": self._policies.version})
        self._health.triton_ok = True

        self._consumer.subscribe(
            [self._limits.input_topic], listener=_CommitOnRevoke(self._on_revoked)
        )
        await self._consumer.start()
        self._health.kafka_ok = True
        self._health.started = True
        fetching = asyncio.create_task(self._fetch_loop(stop), name="fetch")
        dispatching = asyncio.create_task(self._dispatch_loop(), name="dispatch")
        committing = asyncio.create_task(self._commit_loop(), name="commit")
        try:
            stopped = asyncio.create_task(stop.wait())
            done, _ = await asyncio.wait(
                {stopped, fetching, dispatching, committing}, return_when=asyncio.FIRST_COMPLETED
            )
            stopped.cancel()
            for task in done:
                if task is not stopped and task.exception() is not None:
                    raise task.exception()  # type: ignore[misc]
        finally:
            self._health.stopping = True
            await _cancel(fetching)
            await self._drain(dispatching)
            await _cancel(committing)
            await self._commit()
            await _stop_consumer(self._consumer, self._flow.close_timeout_s)
            self._executor.shutdown(wait=False, cancel_futures=True)

    async def _drain(self, dispatching: asyncio.Task[None]) -> None:
        """Finish what was read, within the deadline; whatever is left is redelivered later.

        Stages drain in flow order: events still being decoded feed the batcher, so it closes
        only after they are done; then the last batches are inferred and produced.
        """
        deadline = asyncio.get_running_loop().time() + self._flow.drain_timeout_s
        finished = await _wait_all(self._event_tasks, deadline)
        self._batcher.close()
        finished = finished and await _wait_all({dispatching}, deadline)
        finished = finished and await _wait_all(self._batch_tasks, deadline)
        if not finished:
            logger.warning(
                "drain deadline of %.1fs passed with %d events in flight; they are not "
                "committed and will be redelivered",
                self._flow.drain_timeout_s,
                self._inflight_events,
            )
        leftovers = [*self._event_tasks, dispatching, *self._batch_tasks]
        for task in leftovers:
            task.cancel()
        await asyncio.gather(*leftovers, return_exceptions=True)

    def _on_breaker_change(self, state: BreakerState) -> None:
        self._metrics.circuit_open.set(0 if state is BreakerState.CLOSED else 1)
        if state is not BreakerState.CLOSED:
            self._health.triton_ok = False

    # ── fetch and admit ────────────────────────────────────────────────────────────────────

    async def _fetch_loop(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            self._apply_backpressure()
            # Never read more than the in-flight bound has room for, so one large poll cannot
            # overshoot it (bytes may still overshoot by at most one fetch).
            room = self._flow.max_inflight_events - self._inflight_events
            try:
                batches = await self._consumer.getmany(
                    timeout_ms=200, max_records=max(1, min(room, self._limits.max_poll_records))
                )
            except KafkaError as exc:
                self._health.kafka_ok = False
                logger.warning("fetch failed, retrying: %r", exc)
                await asyncio.sleep(0.5)
                continue
            self._health.kafka_ok = True
            for partition, records in batches.items():
                for record in records:
                    self._admit(partition, record)

    def _apply_backpressure(self) -> None:
        """Pause every assigned partition while too much is in flight or Triton is down.

        Heartbeats go on while paused, so the group does not rebalance.
        """
        flow = self._flow
        over = (
            self._inflight_events >= flow.max_inflight_events
            or self._inflight_bytes >= flow.max_inflight_bytes
            or not self._breaker.closed
        )
        drained = (
            self._inflight_events <= flow.max_inflight_events * RESUME_FRACTION
            and self._inflight_bytes <= flow.max_inflight_bytes * RESUME_FRACTION
            and self._breaker.closed
        )
        assignment = self._consumer.assignment()
        if over or (self._paused and not drained):
            if not self._paused:
                logger.info(
                    "pausing %d partitions: %d events / %d bytes in flight",
                    len(assignment),
                    self._inflight_events,
                    self._inflight_bytes,
                )
            self._paused = True
            self._consumer.pause(*assignment)
            self._metrics.paused_partitions.set(len(assignment))
        elif self._paused:
            self._paused = False
            self._consumer.resume(*assignment)
            self._metrics.paused_partitions.set(0)
            logger.info("resumed %d partitions", len(assignment))

    def _admit(self, partition: TopicPartition, record: ConsumerRecord[bytes, bytes]) -> None:
        size = len(record.value or b"")
        pending = Pending(
            record=record,
            ticket=self._tracker.track(partition, record.offset),
            size=size,
            consumed_at=datetime.now(UTC),
        )
        self._inflight_events += 1
        self._inflight_bytes += size
        self._metrics.events_consumed.labels(record.topic).inc()
        self._update_inflight_gauges()
        self._spawn(self._event_tasks, self._prepare(pending))

    def _spawn(self, tasks: set[asyncio.Task[None]], work: Awaitable[None]) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.ensure_future(work)
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        task.add_done_callback(_log_crash)
        return task

    # ── prepare: parse, fetch, decode ──────────────────────────────────────────────────────

    async def _prepare(self, pending: Pending) -> None:
        if self._revoked_meanwhile(pending):
            return
        loop = asyncio.get_running_loop()
        event: ImageEvent | None = None
        started = time.perf_counter()
        try:
            event = await loop.run_in_executor(self._executor, parse_event, pending.record.value)
            source: str | bytes
            if event.image_b64 is not None:
                source = event.image_b64
            else:
                source = await self._fetcher.fetch(str(event.image_url))
            # One hop to the pool: decoding and, when banks are consulted, hashing.
            image, pdq = await loop.run_in_executor(
                self._executor,
                _decode_and_hash,
                source,
                self.spec.input_size,
                self._image_limits,
                bool(self._banks),
            )
        except EventRejected as exc:
            await self._dead_letter(pending, exc, event)
            return
        except Exception as exc:
            # A bug must not stall the partition's commits or lose the event: record it.
            logger.exception("unexpected error preparing %s", _where(pending.record))
            rejected = EventRejected(
                ReasonCode.INTERNAL_ERROR, f"unexpected {type(exc).__name__}: {exc}"
            )
            await self._dead_letter(pending, rejected, event)
            return
        self._metrics.decode_seconds.observe(time.perf_counter() - started)
        self._batcher.put(Prepared(pending, event, image, time.perf_counter(), pdq))

    # ── batch, infer, decide, produce ──────────────────────────────────────────────────────

    async def _dispatch_loop(self) -> None:
        while True:
            batch = await self._batcher.next_batch()
            if not batch:
                return
            await self._batch_slots.acquire()
            task = self._spawn(self._batch_tasks, self._infer_and_route(batch))
            task.add_done_callback(lambda _: self._batch_slots.release())

    async def _infer_and_route(self, batch: list[Prepared]) -> None:
        dispatched_at = time.perf_counter()
        # A rebalance while the batch waited: skip inference for events no longer ours.
        batch = [item for item in batch if not self._revoked_meanwhile(item.pending)]
        if not batch:
            return
        outcomes = await self._classify(batch)
        deliveries: list[Awaitable[None]] = []
        for item, outcome in outcomes:
            if isinstance(outcome, InferenceRejected):
                rejected = EventRejected(ReasonCode.INFERENCE_REJECTED, str(outcome))
                deliveries.append(self._dead_letter(item.pending, rejected, item.event))
            else:
                wait_s = dispatched_at - item.batched_at
                deliveries.append(self._decide(item, outcome, wait_s))
        await asyncio.gather(*deliveries)

    async def _classify(
        self, batch: list[Prepared]
    ) -> list[tuple[Prepared, Inferred | InferenceRejected]]:
        """Infer a batch, retrying outages; a rejected batch is split to isolate the bad event.

        Every sampled frame of an animated image is classified; the image scores, per
        category, as high as its worst frame.
        """
        counts = [len(item.image.frames) for item in batch]
        rows = np.concatenate([item.image.frames for item in batch])
        try:
            inferred = await self._infer_rows(rows)
        except InferenceRejected as exc:
            if len(batch) == 1:
                return [(batch[0], exc)]
            middle = len(batch) // 2
            return [
                *await self._classify(batch[:middle]),
                *await self._classify(batch[middle:]),
            ]
        outcomes: list[tuple[Prepared, Inferred | InferenceRejected]] = []
        entropies, similarity = inferred.pool_entropy, inferred.prototype_similarity
        start = 0
        for item, count in zip(batch, counts, strict=True):
            frames = slice(start, start + count)
            outcome = Inferred(
                probs=inferred.probs[frames].max(axis=0),
                embedding=inferred.embeddings[start],
                seconds=inferred.seconds,
                pool_entropy=float(entropies[frames].max()) if entropies is not None else None,
                prototype_similarity=(
                    similarity[frames].min(axis=0) if similarity is not None else None
                ),
            )
            outcomes.append((item, outcome))
            start += count
        return outcomes

    async def _infer_rows(self, rows: npt.NDArray[np.uint8]) -> InferredRows:
        """Every row's results, in requests no larger than the batch; with a pool, also the
        entropy of the models' mean prediction per row."""
        results: list[BatchResult] = []
        entropies = []
        seconds = 0.0
        for start in range(0, len(rows), self._max_batch_size):
            chunk = rows[start : start + self._max_batch_size]
            primary, *members = await asyncio.gather(
                self._infer_request(chunk, self._classifier),
                *(self._infer_request(chunk, member) for member in self._pool),
            )
            results.append(primary)
            if members:
                entropies.append(_entropy(np.mean([primary.probs, *[m.probs for m in members]], 0)))
            seconds += max(r.seconds for r in [primary, *members])
        similarities = [r.prototype_similarity for r in results]
        return InferredRows(
            probs=np.concatenate([r.probs for r in results]),
            embeddings=np.concatenate([r.embeddings for r in results]),
            seconds=seconds,
            prototype_similarity=(
                np.concatenate(similarities)  # type: ignore[arg-type]
                if all(s is not None for s in similarities)
                else None
            ),
            pool_entropy=np.concatenate(entropies) if entropies else None,
        )

    async def _infer_request(
        self, pixels: npt.NDArray[np.uint8], classifier: TritonClassifier
    ) -> BatchResult:
        """One Triton request, retried through outages; InferenceRejected is raised as is."""
        backoff = self._triton.retry_initial_backoff_s
        while True:
            await self._breaker.acquire()
            try:
                result = await classifier.classify(pixels)
            except InferenceUnavailable as exc:
                self._health.triton_ok = False
                self._breaker.record_failure()
                self._metrics.triton_errors.labels(exc.code).inc()
                logger.warning("Triton unavailable, retrying in %.2fs: %s", backoff, exc)
                await asyncio.sleep(backoff * random.uniform(0.5, 1.0))
                backoff = min(backoff * 2, self._triton.retry_max_backoff_s)
                continue
            except InferenceRejected as exc:
                # Triton answered: it is up, whatever it thought of this input.
                self._breaker.record_success()
                self._metrics.triton_errors.labels(exc.code).inc()
                raise
            self._breaker.record_success()
            self._health.triton_ok = True
            self._metrics.batch_size.observe(len(pixels))
            self._metrics.inference_seconds.observe(result.seconds)
            return result

    async def _decide(self, item: Prepared, inferred: Inferred, batch_wait_s: float) -> None:
        event = item.event
        times = StageTimes(
            consumed_at=item.pending.consumed_at,
            decode_s=item.image.decode_seconds,
            batch_wait_s=batch_wait_s,
            inference_s=inferred.seconds,
        )
        if self._revoked_meanwhile(item.pending):
            return
        exemplar = None
        if self._banks:
            limits = self._policies.rules_for(event.tenant_id).exemplars
            exemplar = self._banks.match(
                event.tenant_id,
                item.pdq,
                inferred.embedding,
                limits.max_pdq_distance,
                limits.min_similarity,
            )
            if exemplar is not None:
                self._metrics.exemplar_matches.labels(exemplar.bank_id, exemplar.by).inc()
        routed = decide_event(
            event,
            inferred.probs,
            self.spec,
            self._policies,
            times,
            decided_at=datetime.now(UTC),
            exemplar=exemplar,
            pool_entropy=inferred.pool_entropy,
            prototype_similarity=inferred.prototype_similarity,
        )
        action = routed.decision.action
        headers = [
            *_carry_headers(item.pending.record),
            ("content-type", b"application/json"),
            (HEADER_PREFIX + "schema", b"decision/" + routed.decision.schema_version.encode()),
            (HEADER_PREFIX + "action", action.value.encode()),
            (HEADER_PREFIX + "policy-version", routed.decision.policy_version.encode()),
        ]
        await self._sink.deliver(
            routed.topic,
            event.event_id.encode(),
            routed.decision.model_dump_json().encode(),
            headers,
        )
        tenant = self._tenant_labels.label(event.tenant_id)
        reasons = routed.decision.reasons
        category = (reasons[0].category if reasons else None) or "none"
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
                **_record_fields(item.pending.record),
            },
        )
        self._finish(item.pending)

    async def _dead_letter(
        self, pending: Pending, rejected: EventRejected, event: ImageEvent | None
    ) -> None:
        if self._revoked_meanwhile(pending):
            return
        record = pending.record
        value = record.value
        keep_original = value is not None and (
            len(value) * 4 // 3 + DEAD_LETTER_ENVELOPE_BYTES
            < self._limits.producer_max_request_size
        )
        letter = DeadLetter(
            reason_code=rejected.code,
            reason=rejected.message,
            event_id=event.event_id if event else None,
            tenant_id=event.tenant_id if event else None,
            source=SourceRecord(
                topic=record.topic,
                partition=record.partition,
                offset=record.offset,
                timestamp_ms=record.timestamp,
                key_b64=base64.b64encode(record.key).decode() if record.key is not None else None,
            ),
            original_value_b64=base64.b64encode(value).decode()
            if keep_original and value
            else None,
            failed_at=datetime.now(UTC),
        )
        headers = [
            *_carry_headers(record),
            ("content-type", b"application/json"),
            (HEADER_PREFIX + "schema", b"dead_letter/" + letter.schema_version.encode()),
            (HEADER_PREFIX + "error-code", rejected.code.encode()),
            (HEADER_PREFIX + "error", rejected.message[:512].encode()),
            (HEADER_PREFIX + "original-topic", record.topic.encode()),
            (HEADER_PREFIX + "original-partition", str(record.partition).encode()),
            (HEADER_PREFIX + "original-offset", str(record.offset).encode()),
        ]
        await self._sink.deliver(
            self._topics.dead_letter, record.key, letter.model_dump_json().encode(), headers
        )
        self._metrics.dead_letters.labels(rejected.code).inc()
        logger.info(
            "dead-lettered: %s",
            rejected.message,
            extra={
                "reason": rejected.code,
                "event_id": letter.event_id,
                "tenant": letter.tenant_id,
                **_record_fields(record),
            },
        )
        self._finish(pending)

    def _revoked_meanwhile(self, pending: Pending) -> bool:
        """Drop an event whose partition moved to another consumer before its outcome was made.

        Its offset can no longer be committed here and the new owner reads it again from the
        last commit, so producing it would only add a duplicate.
        """
        if self._tracker.owns(pending.ticket):
            return False
        self._metrics.revoked_dropped.inc()
        logger.debug(
            "dropped: partition revoked while in flight", extra=_record_fields(pending.record)
        )
        self._finish(pending)
        return True

    def _finish(self, pending: Pending) -> None:
        pending.ticket.complete()
        self._event_finished.set()
        self._inflight_events -= 1
        self._inflight_bytes -= pending.size
        self._update_inflight_gauges()

    def _update_inflight_gauges(self) -> None:
        self._metrics.inflight_events.set(self._inflight_events)
        self._metrics.inflight_bytes.set(self._inflight_bytes)

    # ── commits ────────────────────────────────────────────────────────────────────────────

    async def _commit_loop(self) -> None:
        while True:
            await asyncio.sleep(self._limits.commit_interval_s)
            await self._commit()
            await self._update_lag()

    async def _update_lag(self) -> None:
        for tp in self._consumer.assignment():
            highwater = self._consumer.highwater(tp)
            if highwater is None:
                continue  # nothing fetched from this partition yet
            try:
                position = await self._consumer.position(tp)
            except (IllegalStateError, KafkaError):
                continue  # revoked meanwhile, or the broker is away: keep the last value
            lag = max(0, highwater - position) + self._tracker.in_flight_of(tp)
            self._metrics.consumer_lag.labels(tp.topic, str(tp.partition)).set(lag)

    async def _commit(self, only: set[TopicPartition] | None = None) -> None:
        """Commit every partition whose contiguous completed offsets moved."""
        assigned = self._consumer.assignment()
        positions = {
            tp: position
            for tp, position in self._tracker.pending_commits().items()
            if tp in assigned and (only is None or tp in only)
        }
        if not positions:
            return
        try:
            await self._consumer.commit(positions)
        except (CommitFailedError, IllegalStateError) as exc:
            # The group rebalanced under us; the new owner re-reads from the last commit.
            logger.warning("commit skipped after a rebalance: %r", exc)
            return
        except KafkaError as exc:
            logger.warning("commit failed, will retry on the next interval: %r", exc)
            return
        self._tracker.mark_committed(positions)
        self._metrics.commits.inc()

    async def _on_revoked(self, revoked: set[TopicPartition]) -> None:
        # Let work already read from these partitions finish (briefly: the whole group waits
        # for this) so its outcomes are committed here instead of repeated by the new owner.
        # Not while stopping: the drain has already finished (or abandoned) that work.
        grace_s = 0.0 if self._health.stopping else self._flow.revoke_grace_s
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace_s
        while any(self._tracker.in_flight_of(tp) for tp in revoked):
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            self._event_finished.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._event_finished.wait(), remaining)
        await self._commit(only=revoked)
        self._tracker.forget(revoked)
        for tp in revoked:
            # Another consumer reports this partition now; a stale series would double it.
            with contextlib.suppress(KeyError):
                self._metrics.consumer_lag.remove(tp.topic, str(tp.partition))


class _CommitOnRevoke(ConsumerRebalanceListener):  # type: ignore[misc]
    """Commit what is complete before partitions move to another consumer."""

    def __init__(self, on_revoked: Callable[[set[TopicPartition]], Awaitable[None]]) -> None:
        self._on_revoked = on_revoked

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self._on_revoked(set(revoked))

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        logger.info("assigned %s", sorted(f"{tp.topic}[{tp.partition}]" for tp in assigned))

        # ── helpers ───────────────────────────────────────────────────────────────────────────────


def _decode_and_hash(
    source: str | bytes, size: int, limits: ImageLimits, with_pdq: bool
) -> tuple[DecodedImage, bytes | None]:
    """Decode inline base64 (``str``) or fetched bytes; add the PDQ hash when asked."""
    data = decode_base64(source, limits) if isinstance(source, str) else source
    image = decode_image(data, size, limits)
    return image, _pdq_or_none(image) if with_pdq else None


async def _stop_consumer(consumer: AIOKafkaConsumer, timeout_s: float) -> None:
    """Close the consumer (leaving the group), giving up after ``timeout_s``.

    Offsets are already committed when this runs, so giving up loses nothing: the group
    reassigns the partitions once the session times out.
    """
    closing = asyncio.create_task(consumer.stop(), name="kafka-consumer-close")
    done, _ = await asyncio.wait({closing}, timeout=timeout_s)
    if not done:
        # Kept in the log: a close this slow means something to look into.
        log_pending_tasks()
        logger.warning(
            "Kafka consumer did not close within %.0fs; exiting without leaving the group "
            "(MODSTREAM_FLOW__CLOSE_TIMEOUT_S)",
            timeout_s,
        )
        closing.cancel()
        return
    if closing.cancelled():
        # aiokafka re-raises the cancellation of its own in-flight fetch (one backing off
        # after a broker outage) from stop(); the consumer is closed all the same.
        logger.warning("Kafka consumer closed while a fetch was being retried")
        return
    closing.result()


def _model_categories(spec: ModelSpec) -> ModelCategories:
    return ModelCategories(spec.class_names, spec.prototype_categories)


def _entropy(probs: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    clipped = np.clip(probs, 1e-12, 1.0)
    result: npt.NDArray[np.float32] = -(clipped * np.log(clipped)).sum(axis=-1)
    return result


def _check_pool_member(primary: ModelSpec, member: ModelSpec) -> None:
    if (member.class_names, member.input_size) != (primary.class_names, primary.input_size):
        raise ModelMismatch(
            f"pool model {member.name} has classes {list(member.class_names)} at "
            f"{member.input_size}px, {primary.name} has {list(primary.class_names)} at "
            f"{primary.input_size}px; a pool needs the same classes and input size "
            "(MODSTREAM_TRITON__POOL_MODELS)"
        )


def _pdq_or_none(image: DecodedImage) -> bytes | None:
    """An image that cannot be hashed is still decided by the other rules."""
    try:
        return pdq_hash(image.pixels)[0]
    except Exception:
        logger.warning(
            "could not compute the PDQ hash; bank matching by embedding only", exc_info=True
        )
        return None


def _carry_headers(record: ConsumerRecord[bytes, bytes]) -> list[tuple[str, bytes]]:
    """The input's headers, minus any that claim to be ours."""
    carried: Headers = record.headers or ()
    return [(k, v) for k, v in carried if not k.startswith(HEADER_PREFIX)]


def _record_fields(record: ConsumerRecord[bytes, bytes]) -> dict[str, object]:
    return {"topic": record.topic, "partition": record.partition, "offset": record.offset}


def _where(record: ConsumerRecord[bytes, bytes]) -> str:
    return f"{record.topic}[{record.partition}]@{record.offset}"


def _log_crash(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        logger.error("pipeline task failed", exc_info=task.exception())


async def _wait_all(tasks: set[asyncio.Task[None]], deadline: float) -> bool:
    """Wait for ``tasks`` (a live set that may shrink) until the loop-time ``deadline``."""
    pending = set(tasks)
    while pending:
        remaining = deadline - asyncio.get_running_loop().time()
        if remaining <= 0:
            return False
        _, pending = await asyncio.wait(pending, timeout=remaining)
    return True


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
