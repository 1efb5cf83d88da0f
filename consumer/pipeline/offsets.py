"""Per-partition commit watermarks with out-of-order completion.

Several batches are in flight at once, so offset 12 may be decided before offset 10. A
partition's commit position only moves past an offset once it and every earlier tracked
offset are complete: committing ``highest contiguous completed offset + 1`` never skips work.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Generic, TypeVar

PartitionKey = TypeVar("PartitionKey")


class PartitionProgress:
    """Offsets of one partition assignment, in the order they were read."""

    def __init__(self) -> None:
        self._outstanding: deque[int] = deque()
        self._completed: set[int] = set()
        self._commit_position: int | None = None
        self._committed: int | None = None

    def track(self, offset: int) -> None:
        if self._outstanding and offset <= self._outstanding[-1]:
            raise ValueError(
                f"offset {offset} tracked after {self._outstanding[-1]}: offsets of a partition "
                "must be tracked in increasing order"
            )
        self._outstanding.append(offset)

    def complete(self, offset: int) -> None:
        self._completed.add(offset)
        while self._outstanding and self._outstanding[0] in self._completed:
            done = self._outstanding.popleft()
            self._completed.discard(done)
            self._commit_position = done + 1

    @property
    def in_flight(self) -> int:
        return len(self._outstanding)

    @property
    def commit_position(self) -> int | None:
        """The offset to commit (next to read), or None if nothing completed yet."""
        return self._commit_position

    def pending_commit(self) -> int | None:
        """The commit position if it moved since the last acknowledged commit."""
        if self._commit_position is not None and self._commit_position != self._committed:
            return self._commit_position
        return None

    def mark_committed(self, position: int) -> None:
        self._committed = position


@dataclass(frozen=True)
class Ticket(Generic[PartitionKey]):
    """Proof that an offset was tracked; completing it after a revoke is a harmless no-op."""

    partition: PartitionKey
    offset: int
    progress: PartitionProgress = field(compare=False, repr=False)

    def complete(self) -> None:
        self.progress.complete(self.offset)


class OffsetTracker(Generic[PartitionKey]):
    """Commit positions for every assigned partition."""

    def __init__(self) -> None:
        self._partitions: dict[PartitionKey, PartitionProgress] = {}

    def track(self, partition: PartitionKey, offset: int) -> Ticket[PartitionKey]:
        progress = self._partitions.get(partition)
        if progress is None:
            progress = self._partitions[partition] = PartitionProgress()
        progress.track(offset)
        return Ticket(partition, offset, progress)

    def pending_commits(self) -> dict[PartitionKey, int]:
        positions: dict[PartitionKey, int] = {}
        for partition, progress in self._partitions.items():
            position = progress.pending_commit()
            if position is not None:
                positions[partition] = position
        return positions

    def mark_committed(self, positions: dict[PartitionKey, int]) -> None:
        for partition, position in positions.items():
            progress = self._partitions.get(partition)
            if progress is not None:
                progress.mark_committed(position)

    def owns(self, ticket: Ticket[PartitionKey]) -> bool:
        """Whether the ticket's partition is still assigned since the ticket was issued.

        A partition revoked and assigned again gets fresh progress, so a ticket from before
        the revoke is not owned even though the partition is.
        """
        return self._partitions.get(ticket.partition) is ticket.progress

    def forget(self, partitions: list[PartitionKey] | set[PartitionKey]) -> None:
        """Drop revoked partitions; their in-flight tickets no longer move any commit."""
        for partition in partitions:
            self._partitions.pop(partition, None)

    def in_flight(self) -> int:
        return sum(progress.in_flight for progress in self._partitions.values())

    def in_flight_of(self, partition: PartitionKey) -> int:
        progress = self._partitions.get(partition)
        return progress.in_flight if progress is not None else 0

    def partitions(self) -> list[PartitionKey]:
        return list(self._partitions)
