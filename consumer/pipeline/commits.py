"""Commit each partition's contiguous completed offsets, on an interval and before hand-over.

Outcomes are produced (and acknowledged) before their offsets complete, so a commit never
gets ahead of a durable outcome; the commit order is the quix-streams one: flush, then
commit ``offset + 1``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from typing import Protocol

from aiokafka import TopicPartition

from consumer.pipeline.offsets import Ticket
from consumer.pipeline.ports import RecordSource
from consumer.runtime.metrics import Metrics

logger = logging.getLogger(__name__)


class CommitTracker(Protocol):
    """Per-partition completion watermarks (``OffsetTracker``)."""

    def track(self, partition: TopicPartition, offset: int) -> Ticket[TopicPartition]: ...

    def owns(self, ticket: Ticket[TopicPartition]) -> bool: ...

    def pending_commits(self) -> dict[TopicPartition, int]: ...

    def mark_committed(self, positions: dict[TopicPartition, int]) -> None: ...

    def forget(self, partitions: set[TopicPartition]) -> None: ...

    def in_flight_of(self, partition: TopicPartition) -> int: ...


class Committer:
    """Commits what the tracker says is complete and reports per-partition lag."""

    def __init__(
        self,
        source: RecordSource,
        tracker: CommitTracker,
        metrics: Metrics,
        interval_s: float,
    ) -> None:
        self._source = source
        self._tracker = tracker
        self._metrics = metrics
        self._interval_s = interval_s

    async def run(self) -> None:
        """Commit and refresh lag every interval, until cancelled."""
        while True:
            await asyncio.sleep(self._interval_s)
            await self.commit()
            await self._update_lag()

    async def commit(self, only: set[TopicPartition] | None = None) -> None:
        """Commit every assigned partition (of ``only``) whose completed offsets moved."""
        assigned = self._source.assignment()
        positions = {
            tp: position
            for tp, position in self._tracker.pending_commits().items()
            if tp in assigned and (only is None or tp in only)
        }
        if positions and await self._source.commit(positions):
            self._tracker.mark_committed(positions)
            self._metrics.commits.inc()

    def hand_over(self, revoked: set[TopicPartition]) -> None:
        """Stop tracking and reporting revoked partitions (after their last commit)."""
        self._tracker.forget(revoked)
        for tp in revoked:
            # Another consumer reports this partition now; a stale series would double it.
            with contextlib.suppress(KeyError):
                self._metrics.consumer_lag.remove(tp.topic, str(tp.partition))

    async def _update_lag(self) -> None:
        lags: Mapping[TopicPartition, int | None] = {
            tp: await self._source.lag(tp) for tp in self._source.assignment()
        }
        for tp, lag in lags.items():
            if lag is not None:  # unknown: keep the last value
                total = lag + self._tracker.in_flight_of(tp)
                self._metrics.consumer_lag.labels(tp.topic, str(tp.partition)).set(total)
