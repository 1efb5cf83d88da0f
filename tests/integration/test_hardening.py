"""Findings of the outside acceptance run, replayed through a real ``modstream run`` process with
the real broker, the real tritonserver and a real (local) image server.

- No log line carries a pre-signed image URL's signature (httpx used to log every request URL).
- A burst of image servers that drip their bytes does not keep other events from being
  decided for longer than the fetch deadline allows.
"""

from __future__ import annotations

import asyncio
import base64
import json
import math
import sys
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from bench.audit import read_to_end
from bench.local.tansu import TansuBroker, ensure_topics
from bench.local.triton import TritonServer
from consumer.runtime.settings import Settings
from tests.integration.test_pipeline import PARTITIONS, make_settings, output_topics, wait_committed
from tests.support.image_server import (
    IMAGE,
    PRESIGNED_QUERY,
    SIGNATURE,
    ImageServer,
    image_server,
)
from tests.support.kafka_io import ends_of, produce_positions
from tests.support.processes import ConsumerProcess, consumer_env

pytestmark = pytest.mark.integration

SECRET = SIGNATURE.split("=", 1)[1]


@pytest.fixture
def images() -> Iterator[ImageServer]:
    with image_server() as server:
        yield server


def _event(event_id: str, **image: str) -> bytes:
    body = {
        "event_id": event_id,
        "tenant_id": "acme",
        "created_at": datetime.now(UTC).isoformat(),
        **image,
    }
    return json.dumps(body).encode()


async def _start(
    settings: Settings, events: list[bytes], env: dict[str, str], log: Path
) -> tuple[ConsumerProcess, dict[int, int]]:
    kafka = settings.kafka
    await ensure_topics(
        kafka.bootstrap_servers,
        {kafka.input_topic: PARTITIONS, **{t: 1 for t in output_topics(settings)}},
    )
    positions = await produce_positions(
        kafka.bootstrap_servers,
        kafka.input_topic,
        # Keys spread the events over the partitions, each in the order given.
        [(f"k{i}".encode(), value, []) for i, value in enumerate(events)],
    )
    member = ConsumerProcess(consumer_env(settings) | env, log)
    await member.start()
    return member, ends_of(positions)


async def test_no_log_line_carries_a_pre_signed_url(
    broker: TansuBroker, triton: TritonServer, images: ImageServer, tmp_path: Path
) -> None:
    settings = make_settings(broker, triton)
    events = [
        _event("served", image_url=images.presigned()),
        _event("redirected", image_url=f"{images.base}/redirect-signed?{PRESIGNED_QUERY}"),
        _event("missing", image_url=f"{images.base}/missing?{PRESIGNED_QUERY}"),
        _event("failing", image_url=f"{images.base}/unavailable?{PRESIGNED_QUERY}"),
        _event("dripping", image_url=f"{images.base}/drip/100?{PRESIGNED_QUERY}"),
    ]
    env = {
        "MODSTREAM_IMAGING__FETCH_ALLOW_NETWORKS": '["127.0.0.1/32"]',
        "MODSTREAM_IMAGING__FETCH_DEADLINE_S": "2",
        "MODSTREAM_LOG__LEVEL": "INFO",
    }
    member, ends = await _start(settings, events, env, tmp_path / "consumer.log")
    try:
        await wait_committed(settings, ends, timeout_s=60)
    finally:
        assert await member.terminate() == 0, member.log_since_start()

    lines = member.log_path.read_text().splitlines()
    # Not vacuous: the run logged, and its retries of the failing server were among it.
    assert any("retrying image fetch from 127.0.0.1" in line for line in lines)
    leaks = [line for line in lines if SECRET in line or "X-Amz-" in line]
    assert leaks == []
    letters = await read_to_end(settings.kafka.bootstrap_servers, [settings.topics.dead_letter])
    codes = {
        json.loads(m.value or b"")["event_id"]: json.loads(m.value or b"")["reason_code"]
        for m in letters
    }
    assert codes == {
        "missing": "image_fetch_http_4xx",
        "failing": "image_fetch_http_5xx",
        "dripping": "image_fetch_timeout",
    }
    assert images.hits["/signed/photo.png"] == 1
    assert images.hits["/signed/target.png"] == 1


# A burst of dripping servers (headers at once, then a byte every 200 ms: no read waits long
# enough for the read timeout) ahead of ordinary events on every partition.
SLOW = 60
GOOD = 40
DEADLINE_S = 2.0
MAX_INFLIGHT_EVENTS = 20
# Group join, decoding and inference of the good events, commits: independent of the burst.
SLACK_S = 10.0


async def test_a_burst_of_slow_image_servers_does_not_hold_up_other_events(
    broker: TansuBroker, triton: TritonServer, images: ImageServer, tmp_path: Path
) -> None:
    settings = make_settings(broker, triton)
    slow = [_event(f"slow-{i}", image_url=f"{images.base}/drip/200?{i}") for i in range(SLOW)]
    inline = base64.b64encode(IMAGE).decode()
    good = [
        _event(f"good-{i}", image_b64=inline)
        if i % 2
        else _event(f"good-{i}", image_url=f"{images.base}/image.png?{i}")
        for i in range(GOOD)
    ]
    env = {
        "MODSTREAM_IMAGING__FETCH_ALLOW_NETWORKS": '["127.0.0.1/32"]',
        # Before the fetch had one deadline, each slow URL took 3 x (1.5 + 1.5) s.
        "MODSTREAM_IMAGING__FETCH_CONNECT_TIMEOUT_S": "1.5",
        "MODSTREAM_IMAGING__FETCH_READ_TIMEOUT_S": "1.5",
        "MODSTREAM_IMAGING__FETCH_DEADLINE_S": str(DEADLINE_S),
        "MODSTREAM_FLOW__MAX_INFLIGHT_EVENTS": str(MAX_INFLIGHT_EVENTS),
    }
    # Every partition starts with its share of the slow events.
    member, ends = await _start(settings, slow + good, env, tmp_path / "consumer.log")
    decision_topics = [t for t in output_topics(settings) if t != settings.topics.dead_letter]
    try:
        await member.wait_started()
        started = time.monotonic()
        decided_s = await _until_decided(settings, decision_topics, GOOD, timeout_s=120)
        await wait_committed(settings, ends, timeout_s=60)
    finally:
        assert await member.terminate() == 0, member.log_since_start()

    # The slow events hold at most the in-flight bound at a time, each for the deadline: the
    # good ones behind them wait that many rounds, not the slow servers' whim.
    bound_s = math.ceil(SLOW / MAX_INFLIGHT_EVENTS) * DEADLINE_S + SLACK_S
    sys.stderr.write(
        f"\n{GOOD} events behind {SLOW} dripping servers decided after "
        f"{decided_s - started:.1f}s (bound {bound_s:.0f}s)\n"
    )
    assert decided_s - started < bound_s, f"good events decided after {decided_s - started:.1f}s"
    letters = await read_to_end(settings.kafka.bootstrap_servers, [settings.topics.dead_letter])
    codes = Counter(json.loads(m.value or b"")["reason_code"] for m in letters)
    assert codes == {"image_fetch_timeout": SLOW}


async def _until_decided(
    settings: Settings, topics: list[str], count: int, timeout_s: float
) -> float:
    """The monotonic time at which ``count`` decisions were first seen."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        decisions = await read_to_end(settings.kafka.bootstrap_servers, topics)
        if len(decisions) >= count:
            return time.monotonic()
        await asyncio.sleep(0.25)
    raise TimeoutError(f"fewer than {count} decisions within {timeout_s}s")
