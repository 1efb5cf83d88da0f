"""The pipeline engine: reads records and hands each one along, in the order an event travels.

    source.fetch ─▶ admit (track offset, flow bounds) ─▶ preparer (parse, fetch, decode)
        ─▶ micro-batcher ─▶ scorer (Triton; several batches in flight)
        ─▶ outcomes (decide, produce, acks=all) ─▶ offset complete ─▶ committer

The engine only orchestrates; its collaborators are the protocols of ``consumer.pipeline.ports``.
Its rules: an offset completes only once its outcome is acknowledged, and the committer
commits only contiguous completed offsets, so a crash can duplicate an outcome but never lose
an event; partitions pause while the flow bounds are exceeded or the scorer is unavailable;
work of a partition revoked meanwhile is dropped (its new owner reads it again); on shutdown,
in-flight work drains in flow order within a deadline.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime

from aiokafka import TopicPartition

from consumer.contract.events import ImageEvent
from consumer.contract.reasons import ReasonCode
from consumer.errors import EventRejected, InferenceRejected, ModstreamError
from consumer.inference.results import Scores
from consumer.pipeline.batcher import MicroBatcher
from consumer.pipeline.commits import Committer, CommitTracker
from consumer.pipeline.flow import FlowControl, Signal
from consumer.pipeline.ports import (
    BatchScorer,
    EngineSettings,
    EventPreparer,
    OutcomeWriter,
    Pending,
    Prepared,
    Record,
    RecordSource,
    Refused,
)
from consumer.pipeline.source import coordinates
from consumer.runtime.health import HealthState
from consumer.runtime.metrics import Metrics
from consumer.runtime.tasks import cancel, spawn, wait_all

logger = logging.getLogger(__name__)


class Engine:
    """Consumes image events and produces one decision or dead letter per event."""

    def __init__(
        self,
        *,
        source: RecordSource,
        preparer: EventPreparer,
        scorer: BatchScorer,
        outcomes: OutcomeWriter,
        tracker: CommitTracker,
        flow: FlowControl,
        settings: EngineSettings,
        metrics: Metrics,
        health: HealthState,
    ) -> None:
        self._source = source
        self._preparer = preparer
        self._scorer = scorer
        self._outcomes = outcomes
        self._tracker = tracker
        self._flow = flow
        self._settings = settings
        self._metrics = metrics
        self._health = health
        self._committer = Committer(source, tracker, metrics, settings.commit_interval_s)
        self._batcher: MicroBatcher[Prepared] = MicroBatcher(
            settings.max_batch_size, settings.max_batch_wait_s
        )
        self._batch_slots = asyncio.Semaphore(settings.max_inflight_batches)
        self._event_tasks: set[asyncio.Task[None]] = set()
        self._batch_tasks: set[asyncio.Task[None]] = set()
        # An outcome that cannot be written at all stops the engine, uncommitted past it.
        self._failure: BaseException | None = None
        self._failed = asyncio.Event()

    async def run(self, stop: asyncio.Event) -> None:
        """Run until ``stop`` is set, then drain in-flight work within the drain deadline
        and commit what completed. Closing the source is the caller's."""
        await self._source.start(self._on_revoked)
        self._health.kafka_ok = True
        self._health.started = True
        fetching = asyncio.create_task(self._fetch_loop(stop), name="fetch")
        dispatching = asyncio.create_task(self._dispatch_loop(), name="dispatch")
        committing = asyncio.create_task(self._committer.run(), name="commit")
        try:
            stopped = asyncio.create_task(stop.wait())
            failed = asyncio.create_task(self._failed.wait())
            done, _ = await asyncio.wait(
                {stopped, failed, fetching, dispatching, committing},
                return_when=asyncio.FIRST_COMPLETED,
            )
            stopped.cancel()
            failed.cancel()
            if self._failure is not None:
                raise self._failure
            for task in done - {stopped, failed}:
                if task.exception() is not None:
                    raise task.exception()  # type: ignore[misc]
        finally:
            self._health.stopping = True
            await cancel(fetching)
            await self._drain(dispatching)
            await cancel(committing)
            await self._committer.commit()

    async def _drain(self, dispatching: asyncio.Task[None]) -> None:
        """Finish what was read, within the deadline; whatever is left is redelivered later.

        Stages drain in flow order: events still being prepared feed the batcher, so it
        closes only after they are done; then the last batches are scored and written.
        """
        deadline = asyncio.get_running_loop().time() + self._settings.drain_timeout_s
        finished = await wait_all(self._event_tasks, deadline)
        self._batcher.close()
        finished = finished and await wait_all({dispatching}, deadline)
        finished = finished and await wait_all(self._batch_tasks, deadline)
        if not finished:
            logger.warning(
                "drain deadline of %.1fs passed with %d events in flight; they are not "
                "committed and will be redelivered",
                self._settings.drain_timeout_s,
                self._flow.events,
            )
        leftovers = [*self._event_tasks, dispatching, *self._batch_tasks]
        for task in leftovers:
            task.cancel()
        await asyncio.gather(*leftovers, return_exceptions=True)

    async def _fetch_loop(self, stop: asyncio.Event) -> None:
        retrying = None
        while not stop.is_set():
            self._apply_backpressure()
            # Never read more than the in-flight bound has room for, so one large poll cannot
            # overshoot it (bytes may still overshoot by at most one fetch).
            wanted = max(1, min(self._flow.room(), self._settings.max_poll_records))
            try:
                batches = await self._source.fetch(wanted)
            except ModstreamError as exc:
                if not exc.retriable:
                    raise
                self._health.kafka_ok = False
                retrying = retrying or self._settings.fetch_retry.begin()
                delay = retrying.next_delay() or self._settings.fetch_retry.max_s
                logger.warning("fetch failed, retrying in %.2fs: %s", delay, exc)
                await asyncio.sleep(delay)
                continue
            retrying = None
            self._health.kafka_ok = True
            for partition, records in batches.items():
                for record in records:
                    self._admit(partition, record)

    def _apply_backpressure(self) -> None:
        was_paused = self._flow.paused
        signal = self._flow.signal(downstream_available=self._scorer.available)
        assignment = self._source.assignment()
        if signal is Signal.PAUSE:
            if not was_paused:
                logger.info(
                    "pausing %d partitions: %d events / %d bytes in flight, scorer available: %s",
                    *(len(assignment), self._flow.events, self._flow.bytes, self._scorer.available),
                )
            # Every time: partitions assigned while paused must be paused too.
            self._source.pause(assignment)
            self._metrics.paused_partitions.set(len(assignment))
        elif signal is Signal.RESUME:
            self._source.resume(assignment)
            self._metrics.paused_partitions.set(0)
            logger.info("resumed %d partitions", len(assignment))

    def _admit(self, partition: TopicPartition, record: Record) -> None:
        size = len(record.value or b"")
        ticket = self._tracker.track(partition, record.offset)
        pending = Pending(record, ticket, size, consumed_at=datetime.now(UTC))
        self._flow.admit(size)
        self._metrics.events_consumed.labels(record.topic).inc()
        spawn(self._event_tasks, self._prepare(pending))

    async def _prepare(self, pending: Pending) -> None:
        if self._revoked_meanwhile(pending):
            return
        prepared = await self._preparer.prepare(pending.record)
        if isinstance(prepared, Refused):
            await self._write_dead_letter(pending, prepared.rejection, prepared.event)
            return
        self._batcher.put(Prepared(pending, prepared, time.perf_counter()))

    async def _dispatch_loop(self) -> None:
        while batch := await self._batcher.next_batch():
            await self._batch_slots.acquire()
            task = spawn(self._batch_tasks, self._score_and_write(batch))
            task.add_done_callback(lambda _: self._batch_slots.release())

    async def _score_and_write(self, batch: list[Prepared]) -> None:
        dispatched_at = time.perf_counter()
        # A rebalance while the batch waited: skip inference for events no longer ours.
        batch = [item for item in batch if not self._revoked_meanwhile(item.pending)]
        if not batch:
            return
        try:
            results = await self._scorer.score([item.ready.image for item in batch])
        except Exception as exc:
            # A bug, not an outage (those are retried inside the scorer): record it per event.
            logger.exception("scoring a batch of %d failed", len(batch))
            rejection = EventRejected(
                ReasonCode.INTERNAL_ERROR, f"scoring failed: {type(exc).__name__}: {exc}"
            )
            await asyncio.gather(
                *(self._write_dead_letter(i.pending, rejection, i.ready.event) for i in batch)
            )
            return
        await asyncio.gather(
            *(
                self._write(item, result, dispatched_at - item.batched_at)
                for item, result in zip(batch, results, strict=True)
            )
        )

    async def _write(
        self,
        item: Prepared,
        result: Scores | EventRejected | InferenceRejected,
        batch_wait_s: float,
    ) -> None:
        if isinstance(result, InferenceRejected):
            rejection = EventRejected(ReasonCode.INFERENCE_REJECTED, str(result))
            await self._write_dead_letter(item.pending, rejection, item.ready.event)
        elif isinstance(result, EventRejected):
            await self._write_dead_letter(item.pending, result, item.ready.event)
        elif not self._revoked_meanwhile(item.pending):
            try:
                await self._outcomes.decision(item, result, batch_wait_s)
            except Exception as exc:
                # Never an unfinished offset: a decision that cannot be made or delivered
                # becomes a dead letter saying why.
                logger.exception("decision failed", extra=coordinates(item.pending.record))
                rejection = EventRejected(
                    ReasonCode.INTERNAL_ERROR, f"decision failed: {type(exc).__name__}: {exc}"
                )
                await self._write_dead_letter(item.pending, rejection, item.ready.event)
                return
            self._finish(item.pending)

    async def _write_dead_letter(
        self, pending: Pending, rejection: EventRejected, event: ImageEvent | None
    ) -> None:
        if self._revoked_meanwhile(pending):
            return
        try:
            await self._outcomes.dead_letter(pending, rejection, event)
        except Exception as exc:
            # Nothing is left to record the event with: stop before any later offset of its
            # partition is committed, so it is read again after a restart.
            logger.exception("dead letter failed; stopping", extra=coordinates(pending.record))
            self._failure = self._failure or exc
            self._failed.set()
            return
        self._finish(pending)

    def _revoked_meanwhile(self, pending: Pending) -> bool:
        """Drop an event whose partition moved to another consumer before its outcome was made:
        the new owner reads it again from the last commit, so producing it would duplicate."""
        if self._tracker.owns(pending.ticket):
            return False
        self._metrics.revoked_dropped.inc()
        logger.debug(
            "dropped: partition revoked while in flight", extra=coordinates(pending.record)
        )
        self._finish(pending)
        return True

    def _finish(self, pending: Pending) -> None:
        pending.ticket.complete()
        self._flow.release(pending.size)

    async def _on_revoked(self, revoked: set[TopicPartition]) -> None:
        # Let work already read from these partitions finish (briefly: the whole group waits
        # for this) so its outcomes are committed here instead of repeated by the new owner.
        # Not while stopping: the drain has already finished (or abandoned) that work.
        grace_s = 0.0 if self._health.stopping else self._settings.revoke_grace_s
        await self._flow.wait_until(
            lambda: not any(self._tracker.in_flight_of(tp) for tp in revoked), grace_s
        )
        await self._committer.commit(only=revoked)
        self._committer.hand_over(revoked)
