"""Transient failures are retried, never dead-lettered."""

from __future__ import annotations

import asyncio
import sys
import time
import urllib.request
from pathlib import Path
from urllib.error import HTTPError

import pytest
from prometheus_client.parser import text_string_to_metric_families

from bench.local.tansu import TansuBroker, ensure_topics
from bench.local.triton import TritonServer
from consumer.runtime.health import HealthServer
from consumer.runtime.settings import TritonSettings
from consumer.service import serve
from tests.integration.conftest import SERVED_MODEL
from tests.integration.test_pipeline import (
    PARTITIONS,
    TENANTS,
    group_committed,
    image_event,
    make_settings,
    output_topics,
    png,
    wait_committed,
    wait_for,
)
from tests.support.kafka_io import produce_all, read_until
from tests.support.paths import TRITON_REPO

pytestmark = pytest.mark.integration


def _status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return int(response.status)
    except HTTPError as exc:
        return int(exc.code)


def _gauges(url: str) -> dict[str, float]:
    with urllib.request.urlopen(url, timeout=2) as response:
        text = response.read().decode()
    return {
        sample.name: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if not sample.labels
    }


async def test_triton_outage_is_retried_and_nothing_is_dead_lettered(
    broker: TansuBroker, triton: TritonServer, tmp_path: Path
) -> None:
    own = TritonServer(
        model_repository=TRITON_REPO, work_dir=tmp_path / "triton", models=[SERVED_MODEL]
    )
    own.start(deadline_s=120)
    try:
        settings = make_settings(broker, own, max_batch_size=8, max_wait_ms=5)
        settings = settings.model_copy(
            update={
                "triton": TritonSettings(
                    url=own.grpc_url,
                    timeout_s=2,
                    retry_initial_backoff_s=0.05,
                    retry_max_backoff_s=0.5,
                )
            }
        )
        kafka = settings.kafka
        await ensure_topics(
            kafka.bootstrap_servers,
            {kafka.input_topic: PARTITIONS, **{t: 1 for t in output_topics(settings)}},
        )
        image = png((220, 30, 30), (1600, 1200))
        records: list[tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]] = [
            (f"o-{i}".encode(), image_event(f"o-{i}", TENANTS[i % 3], image), [])
            for i in range(300)
        ]
        ends = await produce_all(kafka.bootstrap_servers, kafka.input_topic, records)

        async def committed_count() -> int:
            return sum((await group_committed(settings)).values())

        async def started() -> bool:
            return await committed_count() > 0

        servers: list[HealthServer] = []
        stop = asyncio.Event()
        task = asyncio.create_task(serve(settings, stop, on_health_server=servers.append))
        try:
            await wait_for(started, timeout_s=60)
            readyz = f"http://127.0.0.1:{servers[0].port}/readyz"
            assert await asyncio.to_thread(_status, readyz) == 200
            await asyncio.to_thread(own.kill)

            async def not_ready() -> bool:
                return await asyncio.to_thread(_status, readyz) == 503

            await wait_for(not_ready, timeout_s=30)
            metrics_url = f"http://127.0.0.1:{servers[0].port}/metrics"

            async def breaker_open_and_paused() -> bool:
                gauges = await asyncio.to_thread(_gauges, metrics_url)
                return (
                    gauges.get("modstream_triton_circuit_open") == 1
                    and gauges.get("modstream_paused_partitions", 0) > 0
                )

            await wait_for(breaker_open_and_paused, timeout_s=30)
            # Decisions acknowledged just before the kill may still be committed on the next
            # commit tick (100 ms here); after that nothing can complete.
            await asyncio.sleep(0.5)
            during = await committed_count()
            await asyncio.sleep(1.0)
            assert await committed_count() == during, "nothing completes while Triton is down"
            await asyncio.to_thread(own.restart, 120)
            restarted = time.monotonic()

            async def progressing() -> bool:
                return await committed_count() > during

            await wait_for(progressing, timeout_s=60)
            first_commit_s = time.monotonic() - restarted
            await wait_committed(settings, ends, timeout_s=120)
            drained_s = time.monotonic() - restarted
            assert await asyncio.to_thread(_status, readyz) == 200
            gauges = await asyncio.to_thread(_gauges, metrics_url)
            assert gauges["modstream_triton_circuit_open"] == 0
        finally:
            stop.set()
            await asyncio.wait_for(task, timeout=60)
        outcomes = await read_until(
            kafka.bootstrap_servers, output_topics(settings), len(records), timeout_s=30
        )
        assert not [m for m in outcomes if m.topic == settings.topics.dead_letter]
        assert {m.key for m in outcomes} == {key for key, _, _ in records}
        remaining = len(records) - during
        sys.stderr.write(
            f"\nTriton outage: first commit {first_commit_s:.1f}s after Triton was ready again, "
            f"remaining {remaining} events drained in {drained_s:.1f}s "
            f"({remaining / drained_s:.0f}/s)\n"
        )
    finally:
        own.close()
