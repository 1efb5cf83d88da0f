from __future__ import annotations

import random

import pytest

from consumer.pipeline.offsets import OffsetTracker, PartitionProgress


def test_commit_position_waits_for_the_oldest_offset() -> None:
    progress = PartitionProgress()
    for offset in (10, 11, 12):
        progress.track(offset)
    progress.complete(12)
    progress.complete(11)
    assert progress.commit_position is None
    progress.complete(10)
    assert progress.commit_position == 13
    assert progress.in_flight == 0


def test_gaps_in_offsets_do_not_block_commits() -> None:
    progress = PartitionProgress()
    for offset in (5, 7, 9):
        progress.track(offset)
    progress.complete(5)
    assert progress.commit_position == 6
    progress.complete(9)
    assert progress.commit_position == 6
    progress.complete(7)
    assert progress.commit_position == 10


def test_offsets_must_increase() -> None:
    progress = PartitionProgress()
    progress.track(3)
    with pytest.raises(ValueError, match="increasing order"):
        progress.track(3)


def test_random_completion_order_never_commits_past_incomplete_work() -> None:
    rng = random.Random(7)
    progress = PartitionProgress()
    offsets = list(range(1000))
    for offset in offsets:
        progress.track(offset)
    order = offsets[:]
    rng.shuffle(order)
    done: set[int] = set()
    for offset in order:
        progress.complete(offset)
        done.add(offset)
        position = progress.commit_position
        if position is not None:
            assert all(o in done for o in range(position))
            assert position == len(offsets) or position not in done
    assert progress.commit_position == 1000


def test_tracker_reports_only_moved_positions_and_forgets_revoked() -> None:
    tracker: OffsetTracker[str] = OffsetTracker()
    a0 = tracker.track("a", 0)
    tracker.track("a", 1)
    b0 = tracker.track("b", 0)
    a0.complete()
    b0.complete()
    assert tracker.pending_commits() == {"a": 1, "b": 1}
    tracker.mark_committed({"a": 1, "b": 1})
    assert tracker.pending_commits() == {}
    assert tracker.in_flight() == 1
    tracker.forget({"a"})
    assert tracker.partitions() == ["b"]


def test_ticket_of_a_revoked_partition_does_not_move_the_new_assignment() -> None:
    tracker: OffsetTracker[str] = OffsetTracker()
    old = tracker.track("a", 0)
    tracker.forget({"a"})
    tracker.track("a", 0)
    old.complete()
    assert tracker.pending_commits() == {}


def test_a_ticket_from_before_a_revoke_is_not_owned_even_after_reassignment() -> None:
    tracker: OffsetTracker[str] = OffsetTracker()
    before = tracker.track("p0", 5)
    assert tracker.owns(before)
    tracker.forget(["p0"])
    assert not tracker.owns(before)
    after = tracker.track("p0", 5)  # the partition came back and the record was read again
    assert tracker.owns(after)
    assert not tracker.owns(before)
