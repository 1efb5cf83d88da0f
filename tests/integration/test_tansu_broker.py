"""The embedded Tansu broker: lifecycle, topic creation, acks=all and committed offsets."""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from bench.local import tansu
from bench.local.process import free_port, port_accepts
from bench.local.tansu import TansuBroker, ensure_topics, metadata_answers
from consumer.errors import LocalServiceError

pytestmark = pytest.mark.integration

TOPIC = "modstream.test.images"
PARTITIONS = 3
# Test-only group timings: Tansu holds a join for session_timeout_ms / 2.
GROUP_TIMINGS = {"session_timeout_ms": 2000, "heartbeat_interval_ms": 500}


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[TansuBroker]:
    with TansuBroker(log_path=tmp_path / "tansu.log", ready_timeout_s=20) as running:
        yield running


def _pid_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def _consumer(bootstrap: str, group: str) -> AIOKafkaConsumer:
    return AIOKafkaConsumer(
        TOPIC,
        bootstrap_servers=bootstrap,
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        **GROUP_TIMINGS,
    )


async def _produce(bootstrap: str, start: int, count: int) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for i in range(start, start + count):
            await producer.send_and_wait(
                TOPIC, value=f"event-{i}".encode(), key=str(i).encode(), partition=i % PARTITIONS
            )
    finally:
        await producer.stop()


async def _consume(consumer: AIOKafkaConsumer, count: int, timeout_s: float = 20) -> list[str]:
    values: list[str] = []
    async with asyncio.timeout(timeout_s):
        while len(values) < count:
            batches = await consumer.getmany(timeout_ms=500)
            for records in batches.values():
                values.extend(record.value.decode() for record in records)
    return values


async def test_produce_consume_commit_and_resume(broker: TansuBroker) -> None:
    bootstrap = broker.bootstrap_servers
    await ensure_topics(bootstrap, {TOPIC: PARTITIONS})
    # A second call with the same layout is a no-op.
    await ensure_topics(bootstrap, {TOPIC: PARTITIONS})

    await _produce(bootstrap, 0, 30)

    first = _consumer(bootstrap, "group-a")
    await first.start()
    try:
        values = await _consume(first, 30)
        await first.commit()
    finally:
        await first.stop()
    assert sorted(values) == sorted(f"event-{i}" for i in range(30))

    await _produce(bootstrap, 30, 6)

    second = _consumer(bootstrap, "group-a")
    await second.start()
    try:
        partitions = [TopicPartition(TOPIC, p) for p in range(PARTITIONS)]
        committed = {tp.partition: await second.committed(tp) for tp in partitions}
        resumed = await _consume(second, 6)
    finally:
        await second.stop()
    assert committed == {p: 10 for p in range(PARTITIONS)}
    assert sorted(resumed) == sorted(f"event-{i}" for i in range(30, 36))


async def test_existing_topic_with_other_partition_count_is_refused(broker: TansuBroker) -> None:
    await ensure_topics(broker.bootstrap_servers, {"modstream.test.other": 2})
    with pytest.raises(LocalServiceError, match="already exists with 2 partitions"):
        await ensure_topics(broker.bootstrap_servers, {"modstream.test.other": 3})


def test_stop_restart_and_kill(tmp_path: Path) -> None:
    broker = TansuBroker(log_path=tmp_path / "tansu.log")
    broker.start()
    try:
        port, first_pid = broker.port, broker.pid
        assert broker.bootstrap_servers == f"127.0.0.1:{port}"
        assert metadata_answers("127.0.0.1", port)

        broker.restart()
        assert broker.port == port
        assert broker.pid != first_pid
        assert _pid_gone(first_pid)
        assert metadata_answers("127.0.0.1", port)

        second_pid = broker.pid
        broker.kill()
        assert not broker.running()
        assert _pid_gone(second_pid)
        assert not port_accepts(port)
    finally:
        broker.stop()
    assert broker.log_path.read_text().strip()


def test_stop_ends_the_process(tmp_path: Path) -> None:
    with TansuBroker(log_path=tmp_path / "tansu.log") as broker:
        pid = broker.pid
        assert not _pid_gone(pid)
    assert not broker.running()
    assert _pid_gone(pid)


def test_fixed_port_that_is_taken_fails_with_the_log(tmp_path: Path) -> None:
    with TansuBroker(log_path=tmp_path / "first.log") as first:
        second = TansuBroker(port=first.port, log_path=tmp_path / "second.log")
        with pytest.raises(LocalServiceError, match="already in use"):
            second.start()
        assert not second.running()


def test_picked_port_that_gets_taken_is_replaced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        ports = iter([taken, free_port()])
        monkeypatch.setattr(tansu, "free_port", lambda: next(ports))

        with TansuBroker(log_path=tmp_path / "tansu.log") as broker:
            assert broker.port != taken
            assert metadata_answers("127.0.0.1", broker.port)
