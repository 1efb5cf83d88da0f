"""A broker restart with durable storage mid-stream loses nothing.

Tansu keeps its log in S3 (a local moto server on loopback), so topics, records and committed
offsets survive the restart; the consumer rides through it on its retries.
"""

from __future__ import annotations

import asyncio
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.audit import audit
from bench.local.process import ManagedProcess, free_port
from bench.local.tansu import TansuBroker, ensure_topics
from bench.local.triton import TritonServer
from tests.integration.test_pipeline import (
    PARTITIONS,
    TENANTS,
    group_committed,
    image_event,
    make_settings,
    output_topics,
    png,
    running,
    wait_committed,
    wait_for,
)
from tests.support.kafka_io import produce_all

pytestmark = pytest.mark.integration

BUCKET = "tansu"


@pytest.fixture
def s3_endpoint(tmp_path: Path) -> Iterator[str]:
    """A moto S3 server on loopback with an empty bucket."""
    import shutil
    import sys

    binary = shutil.which("moto_server", path=str(Path(sys.executable).parent))
    if binary is None:
        pytest.fail("moto_server is missing: install the dev extra (moto[server])")
    port = free_port()
    server = ManagedProcess(
        "moto", [binary, "-H", "127.0.0.1", "-p", str(port)], tmp_path / "moto.log"
    )
    server.start()
    endpoint = f"http://127.0.0.1:{port}"

    def bucket_created() -> bool:
        try:
            request = urllib.request.Request(f"{endpoint}/{BUCKET}", method="PUT")
            urllib.request.urlopen(request, timeout=2).close()
        except (urllib.error.URLError, ConnectionError):
            return False
        return True

    try:
        server.wait_until(bucket_created, 30, "serving S3 with the bucket created")
        yield endpoint
    finally:
        server.stop()


async def test_broker_restart_with_s3_storage_loses_nothing(
    s3_endpoint: str, triton: TritonServer, tmp_path: Path
) -> None:
    env = {
        "AWS_ENDPOINT": s3_endpoint,
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ALLOW_HTTP": "true",
    }
    with TansuBroker(
        storage_engine=f"s3://{BUCKET}/", env=env, log_path=tmp_path / "tansu.log"
    ) as broker:
        settings = make_settings(broker, triton, max_batch_size=8, max_wait_ms=5)
        kafka = settings.kafka
        outputs = output_topics(settings)
        await ensure_topics(
            kafka.bootstrap_servers, {kafka.input_topic: PARTITIONS, **{t: 1 for t in outputs}}
        )
        image = png((200, 120, 90), (640, 480))
        records: list[tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]] = [
            (f"s-{i}".encode(), image_event(f"s-{i}", TENANTS[i % 3], image), [])
            for i in range(400)
        ]
        ends = await produce_all(kafka.bootstrap_servers, kafka.input_topic, records)

        async def some_committed() -> bool:
            return sum((await group_committed(settings)).values()) > 0

        async with running(settings):
            await wait_for(some_committed, timeout_s=60)
            before = sum((await group_committed(settings)).values())
            assert before < len(records), "restart came too late to test anything"
            down = time.monotonic()
            await asyncio.to_thread(broker.restart)
            restarted_s = time.monotonic() - down
            await wait_committed(settings, ends, timeout_s=180)
        report = await audit(
            kafka.bootstrap_servers, kafka.input_topic, outputs, settings.topics.dead_letter
        )
    assert report.input_records == len(records)
    assert report.missing == []
    assert report.conflicting == []
    assert report.dead_letters == 0
    assert restarted_s < 30
