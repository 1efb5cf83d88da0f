"""The review queue: every tenant's decisions still waiting for a verdict, oldest first.

It is a view of two topics, rebuilt by reading them (``consumer.review.feed``): review
decisions join it, verdicts on the labels topic take them out. Each replica of the page holds
the same view; none owns an item, so a verdict given on one replica clears it on all.

Memory is bounded per tenant: past ``max_held_per_tenant`` waiting items, an entry keeps only
where its decision is (``at``) and the decision is read again when someone opens it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from consumer.contract.events import Decision, ReviewVerdict


@dataclass(frozen=True)
class RecordAt:
    """Where a record is: topic, partition, offset."""

    topic: str
    partition: int
    offset: int


@dataclass(frozen=True)
class QueueEntry:
    event_id: str
    tenant_id: str
    decided_at: datetime
    at: RecordAt
    """The review decision's own record."""
    headers: tuple[tuple[str, bytes], ...]
    decision: Decision | None
    """None past the tenant's memory cap: read it again from ``at``."""


@dataclass
class _TenantQueue:
    entries: dict[str, QueueEntry] = field(default_factory=dict)
    held: int = 0
    ordered: list[QueueEntry] | None = None

    def sorted(self) -> list[QueueEntry]:
        if self.ordered is None:
            self.ordered = sorted(self.entries.values(), key=lambda e: (e.decided_at, e.event_id))
        return self.ordered


class ReviewQueue:
    def __init__(self, max_held_per_tenant: int) -> None:
        self._max_held = max_held_per_tenant
        self._tenants: dict[str, _TenantQueue] = {}
        # Events with a verdict: a decision read after its verdict (another topic, another
        # partition) must not join the queue again.
        self._settled: set[tuple[str, str]] = set()

    def add(
        self, decision: Decision, at: RecordAt, headers: tuple[tuple[str, bytes], ...] = ()
    ) -> bool:
        """Queue a review decision; False when it was settled or is queued already."""
        key = (decision.tenant_id, decision.event_id)
        if key in self._settled:
            return False
        queue = self._tenants.setdefault(decision.tenant_id, _TenantQueue())
        if decision.event_id in queue.entries:
            return False
        hold = queue.held < self._max_held
        queue.entries[decision.event_id] = QueueEntry(
            event_id=decision.event_id,
            tenant_id=decision.tenant_id,
            decided_at=decision.decided_at,
            at=at,
            headers=headers,
            decision=decision if hold else None,
        )
        queue.held += hold
        queue.ordered = None
        return True

    def settle(self, verdict: ReviewVerdict) -> QueueEntry | None:
        """Take the verdict's event out of the queue (if there); it never comes back."""
        self._settled.add((verdict.tenant_id, verdict.event_id))
        queue = self._tenants.get(verdict.tenant_id)
        if queue is None:
            return None
        entry = queue.entries.pop(verdict.event_id, None)
        if entry is not None:
            queue.held -= entry.decision is not None
            queue.ordered = None
        return entry

    def tenants(self) -> list[str]:
        return sorted(self._tenants)

    def entries(self, tenant_id: str) -> list[QueueEntry]:
        """The tenant's waiting items, oldest decision first."""
        queue = self._tenants.get(tenant_id)
        return list(queue.sorted()) if queue is not None else []

    def get(self, tenant_id: str, event_id: str) -> QueueEntry | None:
        queue = self._tenants.get(tenant_id)
        return queue.entries.get(event_id) if queue is not None else None

    def neighbours(self, tenant_id: str, event_id: str) -> tuple[str | None, str | None]:
        """The event ids before and after ``event_id`` in the tenant's queue."""
        ordered = self.entries(tenant_id)
        ids = [entry.event_id for entry in ordered]
        if event_id not in ids:
            return None, ids[0] if ids else None
        index = ids.index(event_id)
        return (
            ids[index - 1] if index > 0 else None,
            ids[index + 1] if index + 1 < len(ids) else None,
        )

    def depth(self, tenant_id: str) -> int:
        queue = self._tenants.get(tenant_id)
        return len(queue.entries) if queue is not None else 0

    def oldest_age_s(self, tenant_id: str, now: datetime) -> float:
        ordered = self.entries(tenant_id)
        if not ordered:
            return 0.0
        return max(0.0, (now - ordered[0].decided_at).total_seconds())
