"""Consumers crash and leave at random while they work: no event is lost, few are repeated.

Consumer processes (``modstream run``) share one group on the real broker and the real
Triton; at random moments one of them is SIGKILLed (or, every third time, stopped with
SIGTERM) and started again, so the group rebalances under load again and again. When the backlog is
committed, ``bench.audit`` reads every topic and proves that each input record has an
outcome and that duplicated outcomes agree. The CI-sized run is in the default suite; the
full one (20,000 events, 24 kills, 3 consumers) runs with ``-m slow``.
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
import time
from dataclasses import asdict
from pathlib import Path

import pytest

from bench.audit import AuditReport, audit
from bench.local.tansu import TansuBroker, ensure_topics
from bench.local.triton import TritonServer
from consumer.runtime.settings import Settings
from tests.integration.test_pipeline import (
    TENANTS,
    image_event,
    make_settings,
    output_topics,
    png,
    wait_for,
)
from tests.support.kafka_io import committed_offsets, produce_all
from tests.support.paths import BENCH_RESULTS
from tests.support.processes import ConsumerProcess, consumer_env

pytestmark = pytest.mark.integration

INPUT_PARTITIONS = 6
RESULTS = BENCH_RESULTS


def _records(
    count: int, seed: int
) -> list[tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]]:
    rng = random.Random(seed)
    images = [
        png((rng.randrange(256), rng.randrange(256), rng.randrange(256)), (48 + 8 * i, 40 + 4 * i))
        for i in range(16)
    ]
    records: list[tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]] = []
    for i in range(count):
        key = f"c-{i}".encode()
        if i % 20 == 7:
            records.append((key, b"{truncated", []))
        else:
            records.append((key, image_event(f"c-{i}", TENANTS[i % 3], images[i % 16]), []))
    return records


async def _committed(settings: Settings) -> dict[int, int]:
    kafka = settings.kafka
    return await committed_offsets(
        kafka.bootstrap_servers, kafka.group_id, kafka.input_topic, INPUT_PARTITIONS
    )


async def crash_run(
    broker: TansuBroker,
    triton: TritonServer,
    work: Path,
    *,
    events: int,
    kills: int,
    consumers: int,
    seed: int,
) -> tuple[AuditReport, dict[str, float]]:
    rng = random.Random(seed)
    settings = make_settings(broker, triton, max_batch_size=16, max_wait_ms=5)
    kafka = settings.kafka
    outputs = output_topics(settings)
    await ensure_topics(
        kafka.bootstrap_servers, {kafka.input_topic: INPUT_PARTITIONS, **{t: 1 for t in outputs}}
    )
    ends = await produce_all(kafka.bootstrap_servers, kafka.input_topic, _records(events, seed))
    env = consumer_env(settings)
    fleet = [ConsumerProcess(env, work / f"consumer-{n}.log") for n in range(consumers)]
    started = time.monotonic()
    for member in fleet:
        await member.start()
    killed = left = 0
    try:
        while killed < kills:
            await asyncio.sleep(rng.uniform(0.5, 3.0))
            victim = rng.choice(fleet)
            # Every third stop is a graceful leave (SIGTERM, drain, commit), the rest crashes.
            if (killed + left) % 3 == 2:
                await victim.wait_started()
                assert await victim.terminate() == 0, victim.log_since_start()
                left += 1
            else:
                await victim.kill()
                killed += 1
            await victim.start()

        async def all_committed() -> bool:
            return await _committed(settings) == ends

        await wait_for(all_committed, timeout_s=300)
        finished = time.monotonic() - started
    finally:
        for member in fleet:
            await member.wait_started()
        codes = [await member.terminate() for member in fleet]
    assert codes == [0] * consumers, [m.log_since_start() for m in fleet]
    report = await audit(
        kafka.bootstrap_servers, kafka.input_topic, outputs, settings.topics.dead_letter
    )
    stats = {
        "events": float(events),
        "kills": float(killed),
        "graceful_leaves": float(left),
        "consumers": float(consumers),
        "starts": float(sum(m.starts for m in fleet)),
        "seconds_to_all_committed": round(finished, 1),
    }
    return report, stats


def _check(report: AuditReport, events: int) -> None:
    assert report.input_records == events
    assert report.missing == [], f"events without an outcome: {report.missing[:20]}"
    assert report.conflicting == [], f"duplicates that disagree: {report.conflicting[:20]}"
    assert report.dead_letters >= events // 20


async def test_kill_consumers_at_random_ci_sized(
    broker: TansuBroker, triton: TritonServer, tmp_path: Path
) -> None:
    events = 1200
    report, stats = await crash_run(
        broker, triton, tmp_path, events=events, kills=5, consumers=2, seed=1
    )
    _check(report, events)
    sys.stderr.write(f"\ncrash test (CI): {report.summary()}; {stats}\n")


@pytest.mark.slow
async def test_kill_consumers_at_random_full(
    broker: TansuBroker, triton: TritonServer, tmp_path: Path
) -> None:
    events = 20_000
    report, stats = await crash_run(
        broker, triton, tmp_path, events=events, kills=24, consumers=3, seed=2
    )
    _check(report, events)
    result = {
        **stats,
        **{k: v for k, v in asdict(report).items() if k not in ("missing", "conflicting")},
    }
    result |= {"missing": len(report.missing), "conflicting": len(report.conflicting)}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "crash.json").write_text(json.dumps(result, indent=2) + "\n")
    sys.stderr.write(f"\ncrash test (full): {report.summary()}; {stats}\n")
