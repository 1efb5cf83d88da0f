"""The review queue: every tenant's decisions still waiting for a verdict, oldest first.

It is a view of two topics, rebuilt by reading them (``consumer.review.feed``): review
decisions join it, verdicts on the labels topic take them out. Each replica of the page holds
the same view; none owns an item, so a verdict given on one replica clears it on all.

Memory is bounded per tenant: past ``max_held_per_tenant`` waiting items, an entry keeps only
where its decision is (``at``) and the decision is read again when someone opens it.
"""

from __future__ import annotations

import base64
import binascii
import bisect
from dataclasses import dataclass, field
from datetime import datetime

from consumer.contract.events import Decision, ReviewClaim, ReviewVerdict


def item_key(event_id: str) -> str:
    """The item's name in URLs: base64url of its event id. Event ids are the tenant's to choose
    (``../``, ``/image``, ``?``); in a path they could point a browser at another item, so they
    never appear in one."""
    return base64.urlsafe_b64encode(event_id.encode()).decode().rstrip("=")


def event_id_of(key: str) -> str | None:
    """The event id an item key names; None for anything that is not a key."""
    try:
        raw = base64.urlsafe_b64decode(key + "=" * (-len(key) % 4))
        event_id = raw.decode("utf-8")
    except (binascii.Error, ValueError):
        return None
    return event_id if event_id and item_key(event_id) == key else None


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


def _order(entry: QueueEntry) -> tuple[datetime, str]:
    return entry.decided_at, entry.event_id


@dataclass
class _TenantQueue:
    entries: dict[str, QueueEntry] = field(default_factory=dict)
    held: int = 0
    # Kept sorted as items come and go: a page view never sorts the whole queue.
    ordered: list[QueueEntry] = field(default_factory=list)

    def insert(self, entry: QueueEntry) -> None:
        self.entries[entry.event_id] = entry
        bisect.insort(self.ordered, entry, key=_order)

    def remove(self, event_id: str) -> QueueEntry | None:
        entry = self.entries.pop(event_id, None)
        if entry is not None:
            del self.ordered[self.index(entry)]
        return entry

    def index(self, entry: QueueEntry) -> int:
        return bisect.bisect_left(self.ordered, _order(entry), key=_order)


class ReviewQueue:
    def __init__(self, max_held_per_tenant: int) -> None:
        self._max_held = max_held_per_tenant
        self._tenants: dict[str, _TenantQueue] = {}
        # Events with a verdict: a decision read after its verdict (another topic, another
        # partition) must not join the queue again.
        self._settled: set[tuple[str, str]] = set()
        # Who has which waiting item open, from every replica (the claims topic).
        self._claims: dict[tuple[str, str], ReviewClaim] = {}

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
        queue.insert(
            QueueEntry(
                event_id=decision.event_id,
                tenant_id=decision.tenant_id,
                decided_at=decision.decided_at,
                at=at,
                headers=headers,
                decision=decision if hold else None,
            )
        )
        queue.held += hold
        return True

    def settle(self, verdict: ReviewVerdict) -> QueueEntry | None:
        """Take the verdict's event out of the queue (if there); it never comes back."""
        self._settled.add((verdict.tenant_id, verdict.event_id))
        queue = self._tenants.get(verdict.tenant_id)
        if queue is None:
            return None
        self._claims.pop((verdict.tenant_id, verdict.event_id), None)
        entry = queue.remove(verdict.event_id)
        if entry is not None:
            queue.held -= entry.decision is not None
        return entry

    def claim(self, claim: ReviewClaim) -> None:
        """Record that ``claim.reviewer_id`` has the item open (the latest claim counts)."""
        key = (claim.tenant_id, claim.event_id)
        if key not in self._settled:
            self._claims[key] = claim

    def claimant(self, tenant_id: str, event_id: str, now: datetime) -> ReviewClaim | None:
        """The claim on an item, while it lasts."""
        claim = self._claims.get((tenant_id, event_id))
        if claim is None or claim.expires_at <= now:
            return None
        return claim

    def next_for(
        self, tenant_id: str, reviewer_id: str, now: datetime, after: str | None = None
    ) -> str | None:
        """The oldest item (after ``after``, when given) that nobody else has open."""
        queue = self._tenants.get(tenant_id)
        if queue is None:
            return None
        start = 0
        if after is not None and (index := self.position(tenant_id, after)) is not None:
            start = index + 1
        for entry in queue.ordered[start:]:
            claim = self.claimant(tenant_id, entry.event_id, now)
            if claim is None or claim.reviewer_id == reviewer_id:
                return entry.event_id
        return None

    def tenants(self) -> list[str]:
        return sorted(self._tenants)

    def entries(self, tenant_id: str, limit: int | None = None) -> list[QueueEntry]:
        """The tenant's waiting items (the first ``limit``), oldest decision first."""
        queue = self._tenants.get(tenant_id)
        return list(queue.ordered[:limit]) if queue is not None else []

    def get(self, tenant_id: str, event_id: str) -> QueueEntry | None:
        queue = self._tenants.get(tenant_id)
        return queue.entries.get(event_id) if queue is not None else None

    def position(self, tenant_id: str, event_id: str) -> int | None:
        """Where ``event_id`` is in the tenant's queue (0: the oldest); None when not there."""
        queue = self._tenants.get(tenant_id)
        entry = queue.entries.get(event_id) if queue is not None else None
        if queue is None or entry is None:
            return None
        return queue.index(entry)

    def neighbours(self, tenant_id: str, event_id: str) -> tuple[str | None, str | None]:
        """The event ids before and after ``event_id`` in the tenant's queue (when it is not
        there any more: none before, the oldest after)."""
        queue = self._tenants.get(tenant_id)
        if queue is None or not queue.ordered:
            return None, None
        index = self.position(tenant_id, event_id)
        if index is None:
            return None, queue.ordered[0].event_id
        ordered = queue.ordered
        return (
            ordered[index - 1].event_id if index > 0 else None,
            ordered[index + 1].event_id if index + 1 < len(ordered) else None,
        )

    def depth(self, tenant_id: str) -> int:
        queue = self._tenants.get(tenant_id)
        return len(queue.entries) if queue is not None else 0

    def oldest_age_s(self, tenant_id: str, now: datetime) -> float:
        queue = self._tenants.get(tenant_id)
        if queue is None or not queue.ordered:
            return 0.0
        return max(0.0, (now - queue.ordered[0].decided_at).total_seconds())
