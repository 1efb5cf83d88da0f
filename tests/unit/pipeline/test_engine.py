"""The engine's rules with in-memory collaborators: one outcome per event, contiguous commits,
backpressure, the scorer's outage pausing partitions, revocation mid-flight, drain on stop."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass

from aiokafka import TopicPartition

from consumer.contract.reasons import ReasonCode
from consumer.errors import DeliveryError
from consumer.pipeline.engine import Engine
from consumer.pipeline.flow import FlowControl
from consumer.pipeline.offsets import OffsetTracker
from consumer.pipeline.ports import EngineSettings, Record
from consumer.runtime.health import HealthState
from consumer.runtime.metrics import Metrics
from consumer.runtime.retry import RetryPolicy
from consumer.runtime.settings import FlowSettings
from tests.support.fakes import (
    BAD,
    TOPIC,
    FakeOutcomes,
    FakePreparer,
    FakeScorer,
    FakeSource,
    record,
)

P0 = TopicPartition(TOPIC, 0)
P1 = TopicPartition(TOPIC, 1)


@dataclass
class Harness:
    engine: Engine
    source: FakeSource
    scorer: FakeScorer
    outcomes: FakeOutcomes
    flow: FlowControl
    metrics: Metrics
    stop: asyncio.Event
    task: asyncio.Task[None] | None = None


def records(partition: int, count: int, bad: Sequence[int] = ()) -> list[Record]:
    return [record(partition, n, BAD if n in bad else None) for n in range(count)]


@asynccontextmanager
async def running(
    partitions: Mapping[int, Sequence[Record]],
    *,
    max_inflight_events: int = 100,
    drain_timeout_s: float = 5.0,
    revoke_grace_s: float = 0.0,
    scorer: FakeScorer | None = None,
    outcomes: FakeOutcomes | None = None,
) -> AsyncIterator[Harness]:
    source = FakeSource(partitions)
    scorer = scorer or FakeScorer()
    outcomes = outcomes or FakeOutcomes()
    metrics = Metrics()
    flow = FlowControl(
        FlowSettings(max_inflight_events=max_inflight_events, drain_timeout_s=drain_timeout_s),
        metrics,
    )
    engine = Engine(
        source=source,
        preparer=FakePreparer(),
        scorer=scorer,
        outcomes=outcomes,
        tracker=OffsetTracker(),
        flow=flow,
        settings=EngineSettings(
            max_batch_size=4,
            max_batch_wait_s=0.005,
            max_inflight_batches=2,
            max_poll_records=50,
            commit_interval_s=0.01,
            drain_timeout_s=drain_timeout_s,
            revoke_grace_s=revoke_grace_s,
            fetch_retry=RetryPolicy(initial_s=0.01, max_s=0.05),
        ),
        metrics=metrics,
        health=HealthState(),
    )
    stop = asyncio.Event()
    harness = Harness(engine, source, scorer, outcomes, flow, metrics, stop)
    task = asyncio.create_task(engine.run(stop))
    harness.task = task
    try:
        yield harness
    finally:
        stop.set()
        scorer.gate.set()
        await asyncio.wait_for(asyncio.gather(task, return_exceptions=True), 10)


async def until(condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not condition():  # noqa: ASYNC110 - polls state spread over several fakes
            await asyncio.sleep(0.002)


async def test_every_event_gets_one_outcome_and_commits_reach_the_end() -> None:
    async with running({0: records(0, 30, bad=(3, 17)), 1: records(1, 20)}) as h:
        await until(lambda: h.outcomes.total == 50)
        await until(lambda: h.source.committed == {P0: 30, P1: 20})
    assert len(h.outcomes.decisions) == 48
    assert sorted(h.outcomes.dead_letters) == [
        (0, 3, ReasonCode.EVENT_INVALID),
        (0, 17, ReasonCode.EVENT_INVALID),
    ]
    assert len(set(h.outcomes.decisions)) == 48
    assert max(h.scorer.batches) <= 4


async def test_commits_never_pass_an_event_without_an_outcome() -> None:
    scorer = FakeScorer()
    scorer.gate.clear()
    async with running({0: records(0, 6)}, scorer=scorer) as h:
        await until(lambda: h.flow.events == 6)
        await asyncio.sleep(0.05)  # several commit intervals
        assert h.source.committed == {}
        scorer.gate.set()
        await until(lambda: h.source.committed == {P0: 6})


async def test_partitions_pause_at_the_in_flight_bound_and_resume_once_drained() -> None:
    scorer = FakeScorer()
    scorer.gate.clear()
    async with running({0: records(0, 40)}, max_inflight_events=8, scorer=scorer) as h:
        await until(lambda: h.source.paused == {P0})
        await asyncio.sleep(0.05)
        # Never read past the bound, and nothing more is fetched while paused.
        assert h.flow.events == 8
        assert h.source.fetched == 8
        assert h.metrics.paused_partitions._value.get() == 1
        scorer.gate.set()
        await until(lambda: h.outcomes.total == 40)
        await until(lambda: h.source.committed == {P0: 40})
        await until(lambda: h.source.paused == set())
    assert h.source.resume_calls >= 1


async def test_an_unavailable_scorer_pauses_every_partition_until_it_is_back() -> None:
    scorer = FakeScorer()
    scorer.available = False
    async with running({0: records(0, 5), 1: records(1, 5)}, scorer=scorer) as h:
        await until(lambda: h.source.paused == {P0, P1})
        await asyncio.sleep(0.05)
        assert h.source.fetched == 0
        assert h.outcomes.total == 0
        scorer.available = True
        await until(lambda: h.outcomes.total == 10)
        await until(lambda: h.source.paused == set())


async def test_work_of_a_revoked_partition_is_dropped_not_written() -> None:
    scorer = FakeScorer()
    scorer.gate.clear()
    async with running({0: records(0, 4), 1: records(1, 4)}, scorer=scorer) as h:
        await until(lambda: h.flow.events == 8)
        # No grace: the partition is handed over with its events still being scored.
        await h.source.revoke({P0})
        scorer.gate.set()
        await until(lambda: h.flow.events == 0)
        await until(lambda: h.source.committed.get(P1) == 4)
    assert sorted(h.outcomes.decisions) == [(1, n) for n in range(4)]
    assert P0 not in h.source.committed
    assert h.metrics.revoked_dropped._value.get() == 4


async def test_revoke_grace_lets_in_flight_work_finish_and_commit_before_hand_over() -> None:
    scorer = FakeScorer()
    scorer.gate.clear()
    async with running({0: records(0, 4)}, scorer=scorer, revoke_grace_s=5.0) as h:
        await until(lambda: h.flow.events == 4)
        revoking = asyncio.create_task(h.source.revoke({P0}))
        await asyncio.sleep(0.02)
        assert not revoking.done()  # waiting for the in-flight events
        scorer.gate.set()
        await asyncio.wait_for(revoking, 5)
    assert sorted(h.outcomes.decisions) == [(0, n) for n in range(4)]
    assert h.source.committed == {P0: 4}


async def test_stop_drains_in_flight_work_and_commits_it() -> None:
    scorer = FakeScorer()
    scorer.gate.clear()
    async with running({0: records(0, 10)}, scorer=scorer) as h:
        await until(lambda: h.flow.events == 10)
        h.stop.set()
        await asyncio.sleep(0.02)
        scorer.gate.set()
    # run() has returned: everything read was decided and committed.
    assert h.outcomes.total == 10
    assert h.source.committed == {P0: 10}


async def test_drain_deadline_leaves_unfinished_work_uncommitted() -> None:
    scorer = FakeScorer()
    scorer.gate.clear()
    source_records = records(0, 6)
    async with running({0: source_records}, scorer=scorer, drain_timeout_s=0.1) as h:
        await until(lambda: h.flow.events == 6)
        h.stop.set()
        await asyncio.sleep(0.3)  # past the deadline, the scorer still has not answered
    assert h.outcomes.total == 0
    assert h.source.committed == {}


async def test_a_decision_that_fails_becomes_a_dead_letter_and_commits_move_on() -> None:
    outcomes = FakeOutcomes(failing_decisions={2})
    async with running({0: records(0, 6)}, outcomes=outcomes) as h:
        await until(lambda: h.source.committed == {P0: 6})
    assert len(h.outcomes.decisions) == 5
    assert h.outcomes.dead_letters == [(0, 2, ReasonCode.INTERNAL_ERROR)]
    assert h.flow.events == 0


async def test_a_scorer_bug_dead_letters_the_batch_instead_of_stalling_it() -> None:
    scorer = FakeScorer()
    scorer.broken = True
    async with running({0: records(0, 5)}, scorer=scorer) as h:
        await until(lambda: h.source.committed == {P0: 5})
    assert {code for _, _, code in h.outcomes.dead_letters} == {ReasonCode.INTERNAL_ERROR}
    assert len(h.outcomes.dead_letters) == 5


async def test_an_outcome_that_cannot_be_written_stops_the_engine_uncommitted() -> None:
    outcomes = FakeOutcomes(failing_decisions={3}, failing_dead_letters={3})
    async with running({0: records(0, 8)}, outcomes=outcomes) as h:
        task = h.task
        assert task is not None
        await until(task.done)
    assert isinstance(task.exception(), DeliveryError)
    # Nothing at or after the lost offset was committed: it is read again after a restart.
    assert h.source.committed.get(P0, 0) <= 3
