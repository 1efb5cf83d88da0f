"""``modstream bench``: the pipeline end to end, against raw Triton and against a naive consumer.

One run starts the Tansu broker and tritonserver on loopback and measures, on the same JPEG
photos (scikit-image's sample photos upscaled to the requested size, with mild noise):

- **raw Triton**: the photos pre-decoded to ``(N, S, S, 3)`` uint8, sent through
  ``TritonClassifier`` in batches of the consumer's ``max_batch_size`` with as many batches in
  flight as the consumer allows. No Kafka, no decoding: the ceiling the pipeline aims at.
- **end to end**: a backlog of ImageEvents with inline base64, published to a partitioned input
  topic before the consumer starts, drained by the real consumer (``consumer.service.serve``)
  with its configured batching; then events paced at half the measured rate, for latency.
- **naive**: a sequential consumer that reads one record, parses it, decodes it, sends that one
  image to Triton, produces the decision, waits for the ack and commits before reading the
  next. It reads the same backlog in its own group and calls the functions the pipeline calls
  (``parse_event``, ``decode_base64``, ``decode_image``), so the difference between the two is
  what batching and pipelining buy, not a different decoder.

Throughputs count decisions between the first and the last ``decided_at`` read back from
Kafka, which leaves group joins and startup checks out; the time until every offset is
committed is reported beside them. Results go to ``<out>/bench-<UTC timestamp>.json`` and
``<out>/latest.json``. The targets are reported as met or missed, never enforced.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import itertools
import json
import logging
import os
import platform
import resource
import signal
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Coroutine, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Final, TypeAlias

import numpy as np
import numpy.typing as npt
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.structs import ConsumerRecord, RecordMetadata
from PIL import Image

from bench.clone import clone_root
from bench.local.process import proc_status_kib
from bench.local.tansu import TansuBroker, ensure_topics
from bench.local.triton import TritonServer
from consumer.contract.events import Action, Decision, ImageEvent
from consumer.contract.parse import parse_event
from consumer.errors import ConfigError, LocalServiceError
from consumer.imaging.decode import ImageLimits, decode_base64, decode_image
from consumer.inference.triton import TritonClassifier
from consumer.moderation.decide import StageTimes, decide_event
from consumer.moderation.policy import PolicySet, load_policy
from consumer.produce import build_event
from consumer.runtime.kafka import build_consumer, build_producer
from consumer.runtime.metrics import Metrics
from consumer.runtime.settings import (
    BatchSettings,
    KafkaSettings,
    MetricsSettings,
    PolicySettings,
    Settings,
    TopicSettings,
    TritonSettings,
)
from consumer.service import serve, topic_routes

logger = logging.getLogger(__name__)

DEFAULT_MODEL: Final = "nsfw_mobilenet_v2"

TENANTS: Final = ("kids-app", "art-gallery", "acme")
SAMPLE_PHOTOS: Final = ("astronaut", "coffee", "chelsea", "rocket")
JPEG_QUALITY: Final = 90
# Gaussian noise, in 8-bit levels, added to the upscaled photos: enough that the JPEGs are not
# trivially compressible, too little to see.
NOISE_SIGMA: Final = 3.0

# Targets for the pipeline; a run reports whether they are met and exits 0 either way.
TARGET_VS_RAW_TRITON: Final = 0.9
TARGET_VS_NAIVE: Final = 5.0
# The latency phase paces events at this share of the measured end-to-end throughput.
LATENCY_LOAD_FRACTION: Final = 0.5

# Tansu holds group joins for session_timeout_ms / 2; these are the smallest values real
# Kafka accepts by default, so the consumer's settings stay deployable.
SESSION_TIMEOUT_MS: Final = 6000
HEARTBEAT_INTERVAL_MS: Final = 2000
# Room on top of the largest event for the record batch envelope and headers.
RECORD_OVERHEAD_BYTES: Final = 64 * 1024
POLL_INTERVAL_S: Final = 0.1
EXIT_INTERRUPTED: Final = 130
E2E_PREFIX: Final = "e2e-"
LATENCY_PREFIX: Final = "lat-"

Pixels = npt.NDArray[np.uint8]
SignalHandler: TypeAlias = Callable[[int, FrameType | None], object] | int | signal.Handlers | None
Record: TypeAlias = ConsumerRecord[bytes, bytes]


class BenchmarkStalled(LocalServiceError):
    """The consumer under test stopped making progress before the backlog was done."""


# ── results ──────────────────────────────────────────────────────────────────────────────


@dataclass(frozen=True)
class BenchImage:
    """One generated photo as JPEG bytes."""

    name: str
    width: int
    height: int
    jpeg: bytes


@dataclass(frozen=True)
class RawTritonResult:
    images: int
    batches: int
    batch_size: int
    inflight_batches: int
    seconds: float
    images_per_s: float
    mean_request_ms: float


@dataclass(frozen=True)
class StageMeans:
    """Means of ``Decision.timings`` over a set of decisions, in milliseconds.

    For a backlog, ``queue_ms`` and ``total_ms`` mostly measure how long events waited in it.
    """

    queue_ms: float
    decode_ms: float
    batch_wait_ms: float
    inference_ms: float
    total_ms: float


@dataclass(frozen=True)
class StreamResult:
    """One consumer over one backlog, as read back from its output topics."""

    events: int
    decisions: int
    dead_letters: int
    duplicates: int
    first_to_last_decision_s: float
    decisions_per_s: float
    startup_s: float
    """From starting the consumer to its first decision (group join, model check, 1st batch)."""
    all_committed_s: float
    """From starting the consumer until every offset of the backlog was committed."""
    stage_means: StageMeans
    mean_batch_size: float | None


@dataclass(frozen=True)
class LatencyResult:
    target_rate_per_s: float
    achieved_rate_per_s: float
    events: int
    decisions: int
    p50_ms: float
    p99_ms: float
    mean_ms: float
    max_ms: float
    stage_means: StageMeans
    mean_batch_size: float | None


@dataclass(frozen=True)
class PublishResult:
    events: int
    bytes: int
    seconds: float
    ends: dict[int, int]
    """End offset of each partition written."""


@dataclass(frozen=True)
class PhaseCpu:
    """Wall time of a phase and the CPU seconds each process group used during it."""

    wall_s: float
    cpu_s: dict[str, float]
    cores_busy: dict[str, float]


@dataclass
class Measurements:
    settings: dict[str, object] = field(default_factory=dict)
    cpu_per_event_ms: dict[str, float] = field(default_factory=dict)
    raw_triton: RawTritonResult | None = None
    raw_triton_by_batch_size: list[RawTritonResult] = field(default_factory=list)
    publish: PublishResult | None = None
    end_to_end: StreamResult | None = None
    latency: LatencyResult | None = None
    naive: StreamResult | None = None
    phase_cpu: dict[str, PhaseCpu] = field(default_factory=dict)
    resources: dict[str, float | None] = field(default_factory=dict)


@dataclass(frozen=True)
class BenchConfig:
    events: int
    megapixels: float
    batch_size: int | None
    inflight_batches: int | None
    partitions: int
    latency_seconds: float
    raw_min_seconds: float
    model_repository: Path
    model_name: str
    policy_path: Path
    quick: bool


# ── entry point ──────────────────────────────────────────────────────────────────────────


def run_benchmark(
    events: int,
    megapixels: float,
    out_dir: Path,
    *,
    batch_size: int | None = None,
    inflight_batches: int | None = None,
    partitions: int = 4,
    latency_seconds: float | None = None,
    quick: bool = False,
    model_repository: Path | None = None,
    model_name: str = DEFAULT_MODEL,
    policy_path: Path | None = None,
) -> int:
    """Run the three measurements, print a table and write the JSON report; return the exit code.

    ``batch_size`` and ``inflight_batches`` default to the consumer's settings (MODSTREAM_*
    environment included); ``quick`` shortens the latency phase and the raw Triton run, for
    tests. Returns 0 whether or not the targets are met, 130 when interrupted (Ctrl-C or
    SIGTERM), after stopping the consumer, the broker and Triton.

    Raises ConfigError for impossible arguments or a missing model repository or policy, and
    LocalServiceError when the broker or Triton cannot start or the consumer stalls.
    """
    if events < 2:
        raise ConfigError("bench needs at least 2 events to measure a rate")
    if not 0.01 <= megapixels <= 60:
        raise ConfigError(f"megapixels must be between 0.01 and 60, not {megapixels}")
    if partitions < 1:
        raise ConfigError("the input topic needs at least one partition")
    if model_repository is None:
        model_repository = clone_root() / "triton_repo"
    if policy_path is None:
        policy_path = clone_root() / "policies" / "default.yaml"
    for path in (model_repository, policy_path):
        if not path.exists():
            raise ConfigError(f"{path} does not exist; run the benchmark from the repository")
    config = BenchConfig(
        events=events,
        megapixels=megapixels,
        batch_size=batch_size,
        inflight_batches=inflight_batches,
        partitions=partitions,
        latency_seconds=latency_seconds if latency_seconds is not None else (2.0 if quick else 5.0),
        raw_min_seconds=0.5 if quick else 2.0,
        model_repository=model_repository,
        model_name=model_name,
        policy_path=policy_path,
        quick=quick,
    )
    if logger.level == logging.NOTSET:
        # Progress lines for a run that takes minutes, without the consumer's own INFO logs.
        logger.setLevel(logging.INFO)

    started_at = datetime.now(UTC)
    began = time.monotonic()
    measurements = Measurements()
    restore_sigterm = _sigterm_as_interrupt()
    try:
        logger.info("generating %d photos of about %.1f MP", len(SAMPLE_PHOTOS), megapixels)
        images = generate_images(megapixels)
        with contextlib.ExitStack() as stack:
            work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="modstream-bench-")))
            broker = stack.enter_context(
                TansuBroker(log_path=work / "tansu.log", ready_timeout_s=30)
            )
            triton = stack.enter_context(
                TritonServer(model_repository=model_repository, models=[model_name])
            )
            groups = {"broker": broker.pid, "triton": triton.pid}
            _run_interruptible(_measure(config, images, broker, triton, measurements, groups))
            measurements.resources = _resources(groups)
            logger.info("stopping the broker and Triton")
    except KeyboardInterrupt:
        logger.warning("benchmark interrupted; the consumer, the broker and Triton were stopped")
        return EXIT_INTERRUPTED
    finally:
        restore_sigterm()

    report = build_report(config, images, measurements, started_at, time.monotonic() - began)
    written = write_report(report, out_dir)
    sys.stdout.write(format_table(config, images, measurements, time.monotonic() - began))
    sys.stdout.write(f"wrote {written} and {out_dir / 'latest.json'}\n")
    return 0


def _sigterm_as_interrupt() -> Callable[[], None]:
    """Make SIGTERM unwind like Ctrl-C, so the child servers get stopped; returns the undo."""
    try:
        previous: SignalHandler = signal.signal(signal.SIGTERM, _interrupt)
    except ValueError:
        # Not the main thread: signals belong to whoever runs it.
        return lambda: None

    def restore() -> None:
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)

    return restore


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _run_interruptible(work: Coroutine[object, object, None]) -> None:
    """``asyncio.run(work)``; SIGTERM cancels it as Ctrl-C does, so its cleanup runs in order.

    Raises KeyboardInterrupt when interrupted by either signal.
    """
    handles_sigterm = signal.getsignal(signal.SIGTERM) is _interrupt

    async def cancellable() -> None:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        if handles_sigterm and task is not None:
            loop.add_signal_handler(signal.SIGTERM, task.cancel)
        try:
            await work
        finally:
            if handles_sigterm:
                loop.remove_signal_handler(signal.SIGTERM)
                # Removing the loop's handler resets SIGTERM to its default; keep unwinding.
                signal.signal(signal.SIGTERM, _interrupt)

    try:
        asyncio.run(cancellable())
    except asyncio.CancelledError:
        raise KeyboardInterrupt("SIGTERM") from None


# ── the run ──────────────────────────────────────────────────────────────────────────────


async def _measure(
    config: BenchConfig,
    images: Sequence[BenchImage],
    broker: TansuBroker,
    triton: TritonServer,
    measurements: Measurements,
    groups: Mapping[str, int],
) -> None:
    run = uuid.uuid4().hex[:8]
    settings = consumer_settings(config, broker, triton, run, images)
    policies = load_policy(settings.policy.path, topic_routes(settings.topics))
    measurements.settings = _describe_settings(config, settings)
    meter = CpuMeter(groups)

    await _raw_triton_phase(config, settings, images, meter, measurements)

    kafka = settings.kafka
    naive_topic = f"bench-naive-decisions-{run}"
    outcome_topics = [*_decision_topics(policies), settings.topics.dead_letter]
    await ensure_topics(
        kafka.bootstrap_servers,
        {kafka.input_topic: config.partitions, naive_topic: 1, **{t: 1 for t in outcome_topics}},
    )
    backlog = await _pipeline_phases(config, settings, images, outcome_topics, meter, measurements)

    logger.info("naive consumer: one event at a time over the same backlog")
    naive_started = time.time()
    with meter.phase("naive", measurements.phase_cpu):
        naive_committed = await run_naive_consumer(
            settings,
            policies,
            backlog.ends,
            naive_topic,
            ImageLimits.from_settings(settings.imaging),
            _stall_timeout_s(config),
        )
    naive_records = await read_records(kafka, [naive_topic], config.events, timeout_s=60)
    measurements.naive = stream_result(
        naive_records,
        E2E_PREFIX,
        config.events,
        settings.topics.dead_letter,
        naive_started,
        naive_committed,
        1.0,
    )


def _stall_timeout_s(config: BenchConfig) -> float:
    return 120.0 + config.events


async def _raw_triton_phase(
    config: BenchConfig,
    settings: Settings,
    images: Sequence[BenchImage],
    meter: CpuMeter,
    measurements: Measurements,
) -> None:
    batch_size = settings.batching.max_batch_size
    inflight = settings.triton.max_inflight_batches
    limits = ImageLimits.from_settings(settings.imaging)
    classifier = TritonClassifier(settings.triton)
    try:
        spec = await classifier.connect(batch_size)
        measurements.cpu_per_event_ms = per_event_costs(images, spec.input_size, limits)
        pool = [decode_image(image.jpeg, spec.input_size, limits).pixels for image in images]
        logger.info("raw Triton: batches of %d, %d in flight", batch_size, inflight)
        with meter.phase("raw_triton", measurements.phase_cpu):
            raw = await measure_raw_triton(
                classifier, pool, config.events, batch_size, inflight, config.raw_min_seconds
            )
        measurements.raw_triton = raw
        # Not a target, a diagnosis: how Triton's cost per image depends on the batch size.
        for size in sorted(size for size in {1, 4, 8, 16} if size < batch_size):
            measurements.raw_triton_by_batch_size.append(
                await measure_raw_triton(
                    classifier, pool, config.events, size, inflight, config.raw_min_seconds / 4
                )
            )
        measurements.raw_triton_by_batch_size.append(raw)
    finally:
        await classifier.close()


async def _pipeline_phases(
    config: BenchConfig,
    settings: Settings,
    images: Sequence[BenchImage],
    outcome_topics: Sequence[str],
    meter: CpuMeter,
    measurements: Measurements,
) -> PublishResult:
    """The backlog, then the latency run, through one running consumer; returns the backlog."""
    kafka = settings.kafka
    stall_timeout_s = _stall_timeout_s(config)
    producer = build_producer(kafka)
    await producer.start()
    try:
        logger.info("publishing a backlog of %d events to %s", config.events, kafka.input_topic)
        with meter.phase("publish_backlog", measurements.phase_cpu):
            backlog = await publish_backlog(producer, kafka.input_topic, images, config.events)
        measurements.publish = backlog

        metrics = Metrics()
        stop = asyncio.Event()
        consumer_started = time.time()
        serving = asyncio.create_task(serve(settings, stop, metrics=metrics), name="bench-serve")
        try:
            logger.info("end to end: the consumer drains the backlog")
            with meter.phase("end_to_end", measurements.phase_cpu):
                committed_at = await wait_for_commits(kafka, backlog.ends, serving, stall_timeout_s)
            e2e_batches = _batch_totals(metrics)
            outcomes = await read_records(kafka, outcome_topics, config.events, timeout_s=60)
            e2e = stream_result(
                outcomes,
                E2E_PREFIX,
                config.events,
                settings.topics.dead_letter,
                consumer_started,
                committed_at,
                _mean_batch(e2e_batches),
            )
            measurements.end_to_end = e2e

            rate = e2e.decisions_per_s * LATENCY_LOAD_FRACTION
            logger.info("latency: %.1f events/s for %.0fs", rate, config.latency_seconds)
            with meter.phase("latency", measurements.phase_cpu):
                paced = await publish_paced(
                    producer, kafka.input_topic, images, rate, config.latency_seconds, config.events
                )
                ends = {
                    p: max(backlog.ends.get(p, 0), paced.ends.get(p, 0))
                    for p in {*backlog.ends, *paced.ends}
                }
                await wait_for_commits(kafka, ends, serving, stall_timeout_s)
            latency_batches = _batch_totals(metrics, since=e2e_batches)
        finally:
            await stop_consumer(serving, stop, settings.flow.drain_timeout_s)
    finally:
        await producer.stop()

    outcomes = await read_records(kafka, outcome_topics, config.events + paced.events, timeout_s=60)
    measurements.latency = latency_result(outcomes, paced, rate, _mean_batch(latency_batches))
    return backlog


def consumer_settings(
    config: BenchConfig,
    broker: TansuBroker,
    triton: TritonServer,
    run: str,
    images: Sequence[BenchImage],
) -> Settings:
    """The consumer's own defaults (MODSTREAM_* environment included), on this run's topics.

    Record size limits are raised to fit the largest event if the defaults are too small.
    """
    base = Settings()
    largest_event = max(len(image.jpeg) for image in images) * 4 // 3 + RECORD_OVERHEAD_BYTES
    record_limit = max(base.kafka.producer_max_request_size, 2 * largest_event)
    kafka = base.kafka.model_copy(
        update={
            "bootstrap_servers": broker.bootstrap_servers,
            "group_id": f"bench-pipeline-{run}",
            "input_topic": f"bench-images-{run}",
            "session_timeout_ms": SESSION_TIMEOUT_MS,
            "heartbeat_interval_ms": HEARTBEAT_INTERVAL_MS,
            "producer_max_request_size": record_limit,
            "max_partition_fetch_bytes": max(base.kafka.max_partition_fetch_bytes, record_limit),
            "fetch_max_bytes": max(base.kafka.fetch_max_bytes, record_limit),
        }
    )
    triton_update: dict[str, object] = {"url": triton.grpc_url, "model_name": config.model_name}
    if config.inflight_batches is not None:
        triton_update["max_inflight_batches"] = config.inflight_batches
    batching = base.batching
    if config.batch_size is not None:
        batching = BatchSettings(max_batch_size=config.batch_size, max_wait_ms=batching.max_wait_ms)
    return base.model_copy(
        update={
            "kafka": KafkaSettings.model_validate(kafka.model_dump()),
            "topics": TopicSettings(
                allow=f"bench-allow-{run}",
                review=f"bench-review-{run}",
                block=f"bench-block-{run}",
                dead_letter=f"bench-deadletter-{run}",
            ),
            "triton": TritonSettings.model_validate({**base.triton.model_dump(), **triton_update}),
            "batching": batching,
            "policy": PolicySettings(path=config.policy_path),
            "metrics": MetricsSettings(host="127.0.0.1", port=0),
        }
    )


def _describe_settings(config: BenchConfig, settings: Settings) -> dict[str, object]:
    consumer = settings.model_dump(
        mode="json", include={"kafka", "batching", "imaging", "flow", "triton"}
    )
    return {
        "events": config.events,
        "megapixels": config.megapixels,
        "tenants": list(TENANTS),
        "input_partitions": config.partitions,
        "latency_seconds": config.latency_seconds,
        "latency_load_fraction": LATENCY_LOAD_FRACTION,
        "raw_triton_min_seconds": config.raw_min_seconds,
        "quick": config.quick,
        "model": config.model_name,
        "model_repository": str(config.model_repository),
        "policy": str(config.policy_path),
        "consumer": consumer,
    }


def _decision_topics(policies: PolicySet) -> list[str]:
    rules = [policies.rules_for(tenant) for tenant in TENANTS]
    return sorted({r.topics.for_action(action) for r in rules for action in Action})


# ── images ───────────────────────────────────────────────────────────────────────────────


def generate_images(megapixels: float, seed: int = 0) -> list[BenchImage]:
    """scikit-image's sample photos upscaled to about ``megapixels`` with noise, as JPEG."""
    from skimage import data

    rng = np.random.default_rng(seed)
    target = megapixels * 1e6
    images = []
    for name in SAMPLE_PHOTOS:
        photo = Image.fromarray(getattr(data, name)()).convert("RGB")
        scale = (target / (photo.width * photo.height)) ** 0.5
        size = (max(1, round(photo.width * scale)), max(1, round(photo.height * scale)))
        upscaled = np.asarray(photo.resize(size, Image.Resampling.BICUBIC), dtype=np.float32)
        noisy = upscaled + rng.normal(0.0, NOISE_SIGMA, upscaled.shape).astype(np.float32)
        out = io.BytesIO()
        Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).save(
            out, format="JPEG", quality=JPEG_QUALITY
        )
        images.append(BenchImage(name, size[0], size[1], out.getvalue()))
    return images


def per_event_costs(
    images: Sequence[BenchImage], input_size: int, limits: ImageLimits
) -> dict[str, float]:
    """Milliseconds per event, on one thread, of the CPU-bound steps every consumer repeats."""
    values = [build_event(image.jpeg, TENANTS[0]).model_dump_json().encode() for image in images]
    rounds = 3
    totals = {"parse_event_ms": 0.0, "decode_base64_ms": 0.0, "decode_image_ms": 0.0}
    for _ in range(rounds):
        for value in values:
            began = time.perf_counter()
            event = parse_event(value)
            parsed = time.perf_counter()
            raw = decode_base64(event.image_b64 or "", limits)
            unwrapped = time.perf_counter()
            decode_image(raw, input_size, limits)
            done = time.perf_counter()
            totals["parse_event_ms"] += parsed - began
            totals["decode_base64_ms"] += unwrapped - parsed
            totals["decode_image_ms"] += done - unwrapped
    count = rounds * len(values)
    return {name: round(total * 1000 / count, 3) for name, total in totals.items()}


# ── raw Triton ───────────────────────────────────────────────────────────────────────────


async def measure_raw_triton(
    classifier: TritonClassifier,
    pool: Sequence[Pixels],
    count: int,
    batch_size: int,
    inflight: int,
    min_seconds: float,
) -> RawTritonResult:
    """Images/s of pre-decoded batches with ``inflight`` requests outstanding.

    Passes of ``count`` images repeat until ``min_seconds`` have passed: a pass of a dozen
    batches alone is too short to time.
    """
    cycle = itertools.cycle(pool)
    sizes = [min(batch_size, count - start) for start in range(0, count, batch_size)]
    batches = [np.stack([next(cycle) for _ in range(size)]) for size in sizes]
    await classifier.classify(batches[0])  # warm-up, not timed

    slots = asyncio.Semaphore(inflight)
    request_seconds: list[float] = []

    async def one(batch: Pixels) -> None:
        async with slots:
            result = await classifier.classify(batch)
        request_seconds.append(result.seconds)

    sent = 0
    began = time.perf_counter()
    while True:
        await asyncio.gather(*(one(batch) for batch in batches))
        sent += count
        elapsed = time.perf_counter() - began
        if elapsed >= min_seconds:
            break
    return RawTritonResult(
        images=sent,
        batches=len(request_seconds),
        batch_size=batch_size,
        inflight_batches=inflight,
        seconds=round(elapsed, 4),
        images_per_s=round(sent / elapsed, 2),
        mean_request_ms=round(1000 * float(np.mean(request_seconds)), 3),
    )


# ── producing ────────────────────────────────────────────────────────────────────────────


def _sources(
    images: Sequence[BenchImage], prefix: str, count: int
) -> Iterator[tuple[str, str, bytes]]:
    """(event_id, tenant, jpeg) for each event: photos and tenants cycled."""
    pairs = zip(itertools.cycle(images), itertools.cycle(TENANTS), strict=False)
    for i, (image, tenant) in enumerate(itertools.islice(pairs, count)):
        yield f"{prefix}{i:06d}", tenant, image.jpeg


async def _send(
    producer: AIOKafkaProducer, topic: str, event: ImageEvent
) -> tuple[int, asyncio.Future[RecordMetadata]]:
    value = event.model_dump_json().encode()
    ack: asyncio.Future[RecordMetadata] = await producer.send(
        topic, value, key=event.event_id.encode()
    )
    return len(value), ack


async def _ends(acks: Sequence[asyncio.Future[RecordMetadata]]) -> dict[int, int]:
    ends: dict[int, int] = {}
    for ack in acks:
        meta = await ack
        ends[meta.partition] = max(ends.get(meta.partition, 0), meta.offset + 1)
    return ends


async def publish_backlog(
    producer: AIOKafkaProducer, topic: str, images: Sequence[BenchImage], count: int
) -> PublishResult:
    """Publish ``count`` events keyed by event_id and wait for every acknowledgement."""
    began = time.perf_counter()
    acks = []
    total = 0
    for event_id, tenant, jpeg in _sources(images, E2E_PREFIX, count):
        size, ack = await _send(producer, topic, build_event(jpeg, tenant, event_id))
        total += size
        acks.append(ack)
    ends = await _ends(acks)
    return PublishResult(count, total, round(time.perf_counter() - began, 4), ends)


async def publish_paced(
    producer: AIOKafkaProducer,
    topic: str,
    images: Sequence[BenchImage],
    rate: float,
    seconds: float,
    max_events: int | None = None,
) -> PublishResult:
    """Publish ``rate`` events a second for ``seconds`` (at most ``max_events``); each
    created_at is its sending time."""
    rate = max(rate, 1.0)
    count = max(1, round(rate * seconds))
    if max_events is not None and count > max_events:
        # The broker keeps every event in memory: never more than the backlog again.
        count = max_events
    loop = asyncio.get_running_loop()
    began = loop.time()
    acks = []
    total = 0
    for i, (event_id, tenant, jpeg) in enumerate(_sources(images, LATENCY_PREFIX, count)):
        delay = began + i / rate - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        size, ack = await _send(producer, topic, build_event(jpeg, tenant, event_id))
        total += size
        acks.append(ack)
    sending_s = loop.time() - began
    ends = await _ends(acks)
    return PublishResult(count, total, round(sending_s, 4), ends)


# ── the consumer under test ──────────────────────────────────────────────────────────────


async def wait_for_commits(
    kafka: KafkaSettings,
    ends: Mapping[int, int],
    serving: asyncio.Task[None],
    timeout_s: float,
) -> float:
    """Poll the group's committed offsets until they reach ``ends``; return that wall time.

    Raises BenchmarkStalled when the consumer exits or ``timeout_s`` passes first.
    """
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka.bootstrap_servers)
    await admin.start()
    try:
        partitions = [TopicPartition(kafka.input_topic, p) for p in ends]
        deadline = time.monotonic() + timeout_s
        while True:
            if serving.done():
                serving.result()
                raise BenchmarkStalled("the consumer stopped before committing the backlog")
            offsets = await admin.list_consumer_group_offsets(kafka.group_id, partitions=partitions)
            committed = {tp.partition: meta.offset for tp, meta in offsets.items()}
            if all(committed.get(p, -1) >= end for p, end in ends.items()):
                return time.time()
            if time.monotonic() > deadline:
                raise BenchmarkStalled(
                    f"the consumer had committed {committed} of {dict(ends)} after {timeout_s:.0f}s"
                )
            await asyncio.sleep(POLL_INTERVAL_S)
    finally:
        await admin.close()


async def stop_consumer(serving: asyncio.Task[None], stop: asyncio.Event, drain_s: float) -> None:
    """Ask the consumer to drain and stop; cancel it if it overstays its drain deadline."""
    stop.set()
    try:
        await asyncio.wait_for(serving, timeout=drain_s + 30)
    except TimeoutError:
        logger.warning("the consumer did not stop within %.0fs; cancelled", drain_s + 30)


# ── the naive consumer ───────────────────────────────────────────────────────────────────


async def run_naive_consumer(
    settings: Settings,
    policies: PolicySet,
    ends: Mapping[int, int],
    topic: str,
    limits: ImageLimits,
    timeout_s: float,
) -> float:
    """Process the backlog one record at a time; return the wall time of the last commit.

    Each record is parsed, decoded, classified alone, its decision produced and acknowledged,
    and its offset committed before the next one is read. The producer does not linger: with
    one record at a time, lingering would only add its delay to every event.
    """
    kafka = settings.kafka.model_copy(
        update={"group_id": f"{settings.kafka.group_id}-naive", "producer_linger_ms": 0}
    )
    consumer = build_consumer(kafka)
    producer = build_producer(kafka)
    classifier = TritonClassifier(settings.triton)
    remaining = {p for p, end in ends.items() if end > 0}
    try:
        spec = await classifier.connect(1)
        await producer.start()
        consumer.subscribe([kafka.input_topic])
        await consumer.start()
        async with asyncio.timeout(timeout_s):
            while remaining:
                record: Record = await consumer.getone()
                partition = TopicPartition(record.topic, record.partition)
                if record.offset >= ends.get(record.partition, 0):
                    # Past the backlog (the latency phase's events): not part of this run.
                    consumer.pause(partition)
                    remaining.discard(record.partition)
                    continue
                event = parse_event(record.value)
                image = decode_image(
                    decode_base64(event.image_b64 or "", limits), spec.input_size, limits
                )
                result = await classifier.classify(image.pixels[np.newaxis])
                times = StageTimes(
                    consumed_at=datetime.now(UTC),
                    decode_s=image.decode_seconds,
                    batch_wait_s=0.0,
                    inference_s=result.seconds,
                )
                routed = decide_event(
                    event, result.probs[0], spec, policies, times, decided_at=datetime.now(UTC)
                )
                await producer.send_and_wait(
                    topic, routed.decision.model_dump_json().encode(), key=event.event_id.encode()
                )
                await consumer.commit({partition: record.offset + 1})
                if record.offset + 1 >= ends[record.partition]:
                    consumer.pause(partition)
                    remaining.discard(record.partition)
        return time.time()
    except TimeoutError as exc:
        raise BenchmarkStalled(
            f"the naive consumer did not finish within {timeout_s:.0f}s"
        ) from exc
    finally:
        await consumer.stop()
        await producer.stop()
        await classifier.close()


# ── reading the outcomes ─────────────────────────────────────────────────────────────────


async def read_records(
    kafka: KafkaSettings, topics: Sequence[str], expected: int, timeout_s: float
) -> list[Record]:
    """Every record of ``topics`` from the start, once ``expected`` arrived or time runs out."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=kafka.bootstrap_servers,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=kafka.max_partition_fetch_bytes,
        fetch_max_bytes=kafka.fetch_max_bytes,
    )
    await consumer.start()
    records: list[Record] = []
    try:
        await consumer.topics()  # refreshes metadata so partitions_for_topic knows every topic
        partitions = [
            TopicPartition(topic, p)
            for topic in topics
            for p in sorted(consumer.partitions_for_topic(topic) or ())
        ]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        deadline = time.monotonic() + timeout_s
        while len(records) < expected and time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=200)
            for batch in batches.values():
                records.extend(batch)
    finally:
        await consumer.stop()
    return records


def _decisions(
    records: Sequence[Record], prefix: str, dead_letter_topic: str
) -> tuple[list[Decision], int]:
    mine = [r for r in records if (r.key or b"").startswith(prefix.encode())]
    decisions = [
        Decision.model_validate_json(r.value or b"") for r in mine if r.topic != dead_letter_topic
    ]
    return decisions, len([r for r in mine if r.topic == dead_letter_topic])


def _stage_means(decisions: Sequence[Decision]) -> StageMeans:
    def mean(values: Iterator[float]) -> float:
        return round(float(np.mean(list(values))), 3)

    return StageMeans(
        queue_ms=mean(d.timings.queue_ms for d in decisions),
        decode_ms=mean(d.timings.decode_ms for d in decisions),
        batch_wait_ms=mean(d.timings.batch_wait_ms for d in decisions),
        inference_ms=mean(d.timings.inference_ms for d in decisions),
        total_ms=mean(d.timings.total_ms for d in decisions),
    )


def stream_result(
    records: Sequence[Record],
    prefix: str,
    events: int,
    dead_letter_topic: str,
    started_wall: float,
    committed_wall: float,
    mean_batch_size: float | None,
) -> StreamResult:
    """Throughput from the decisions' own timestamps: (count - 1) / (last - first).

    Raises BenchmarkStalled when fewer than two decisions came back.
    """
    decisions, dead_letters = _decisions(records, prefix, dead_letter_topic)
    unique = {d.event_id: d for d in decisions}
    times = sorted(d.decided_at.timestamp() for d in unique.values())
    if len(times) < 2 or times[-1] <= times[0]:
        raise BenchmarkStalled(f"only {len(times)} decisions came back for {events} events")
    span = times[-1] - times[0]
    return StreamResult(
        events=events,
        decisions=len(unique),
        dead_letters=dead_letters,
        duplicates=len(decisions) - len(unique),
        first_to_last_decision_s=round(span, 4),
        decisions_per_s=round((len(times) - 1) / span, 2),
        startup_s=round(times[0] - started_wall, 3),
        all_committed_s=round(committed_wall - started_wall, 3),
        stage_means=_stage_means(list(unique.values())),
        mean_batch_size=mean_batch_size,
    )


def latency_result(
    records: Sequence[Record],
    paced: PublishResult,
    target_rate: float,
    mean_batch_size: float | None,
) -> LatencyResult:
    decisions, _ = _decisions(records, LATENCY_PREFIX, "")
    unique = list({d.event_id: d for d in decisions}.values())
    if not unique:
        raise BenchmarkStalled("no decision came back for the latency phase")
    totals = np.array([d.timings.total_ms for d in unique])
    return LatencyResult(
        target_rate_per_s=round(max(target_rate, 1.0), 2),
        achieved_rate_per_s=round((paced.events - 1) / paced.seconds, 2)
        if paced.seconds > 0
        else 0.0,
        events=paced.events,
        decisions=len(unique),
        p50_ms=round(float(np.percentile(totals, 50)), 2),
        p99_ms=round(float(np.percentile(totals, 99)), 2),
        mean_ms=round(float(totals.mean()), 2),
        max_ms=round(float(totals.max()), 2),
        stage_means=_stage_means(unique),
        mean_batch_size=mean_batch_size,
    )


def _batch_totals(metrics: Metrics, since: tuple[float, float] = (0.0, 0.0)) -> tuple[float, float]:
    """(images, batches) sent to Triton by the pipeline, minus ``since``."""
    registry = metrics.registry
    images = registry.get_sample_value("modstream_batch_size_sum") or 0.0
    batches = registry.get_sample_value("modstream_batch_size_count") or 0.0
    return images - since[0], batches - since[1]


def _mean_batch(totals: tuple[float, float]) -> float | None:
    images, batches = totals
    return round(images / batches, 2) if batches else None


# ── where the CPU goes ───────────────────────────────────────────────────────────────────


class CpuMeter:
    """CPU seconds of this process and of each child server's process group (Linux /proc).

    This process runs the consumer under test (its decode threads included) and the harness;
    the broker and tritonserver, with Triton's backend stubs, run in process groups of their
    own; ``other_processes`` is the rest of the machine's busy time. Elsewhere than Linux only
    this process is measured.
    """

    def __init__(self, groups: Mapping[str, int]) -> None:
        self._groups = dict(groups)
        self._tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100

    def sample(self) -> dict[str, float]:
        times = os.times()
        sample = {"consumer_and_harness": times.user + times.system}
        for name, leader in self._groups.items():
            sample[name] = self._group_seconds(leader)
        machine = self._machine_seconds()
        if machine is not None:
            # Whatever else runs on the machine competes for the same cores.
            sample["other_processes"] = machine - sum(sample.values())
        return sample

    def _machine_seconds(self) -> float | None:
        """Busy CPU seconds of the whole machine since boot, from /proc/stat."""
        try:
            first = Path("/proc/stat").read_text().splitlines()[0].split()
        except (OSError, IndexError):
            return None
        # user nice system idle iowait irq softirq steal ...: everything but idle and iowait.
        ticks = [int(v) for v in first[1:9]]
        return (sum(ticks) - ticks[3] - ticks[4]) / self._tick

    @contextlib.contextmanager
    def phase(self, name: str, into: dict[str, PhaseCpu]) -> Iterator[None]:
        before, began = self.sample(), time.monotonic()
        yield
        after, wall = self.sample(), time.monotonic() - began
        used = {k: round(after[k] - before[k], 3) for k in after}
        if "other_processes" in used:
            # Per-process and machine-wide counters tick separately: a few ticks either way.
            used["other_processes"] = max(0.0, used["other_processes"])
        into[name] = PhaseCpu(
            wall_s=round(wall, 3),
            cpu_s=used,
            cores_busy={k: round(v / wall, 2) if wall > 0 else 0.0 for k, v in used.items()},
        )

    def _group_seconds(self, leader: int) -> float:
        ticks = 0
        for pid in _group_pids(leader):
            fields = _stat_fields(pid)
            if fields is not None:
                ticks += int(fields[11]) + int(fields[12])  # utime, stime
        return ticks / self._tick


def _stat_fields(pid: int) -> list[str] | None:
    """The fields of /proc/<pid>/stat after the command name (state first), or None."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rfind(")") + 2 :].split()


def _group_pids(leader: int) -> list[int]:
    """Processes in the process group led by ``leader`` (servers start in sessions of their own)."""
    proc = Path("/proc")
    if not proc.is_dir():
        return []
    pids = []
    for entry in proc.iterdir():
        if entry.name.isdigit():
            fields = _stat_fields(int(entry.name))
            if fields is not None and len(fields) > 12 and int(fields[2]) == leader:
                pids.append(int(entry.name))
    return pids


def _resources(groups: Mapping[str, int]) -> dict[str, float | None]:
    """Memory of the processes involved, in MB, read just before the servers stop."""

    def mb(kib: int | None) -> float | None:
        return round(kib / 1024, 1) if kib is not None else None

    broker = groups["broker"]
    triton = [proc_status_kib(pid, "VmRSS") for pid in _group_pids(groups["triton"])]
    # ru_maxrss is in KiB on Linux.
    own_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "consumer_and_harness_peak_rss_mb": mb(own_peak),
        "broker_peak_rss_mb": mb(proc_status_kib(broker, "VmHWM")),
        "broker_rss_mb": mb(proc_status_kib(broker, "VmRSS")),
        "triton_rss_mb": mb(sum(k for k in triton if k is not None)) if triton else None,
    }


# ── report ───────────────────────────────────────────────────────────────────────────────


def _ratio(numerator: float, denominator: float) -> float:
    return round(numerator / denominator, 3) if denominator > 0 else 0.0


def _ratios(measurements: Measurements) -> dict[str, float]:
    e2e = measurements.end_to_end
    raw = measurements.raw_triton
    naive = measurements.naive
    if e2e is None or raw is None or naive is None:
        raise BenchmarkStalled("a measurement is missing; the run did not complete")
    return {
        "end_to_end_vs_raw_triton": _ratio(e2e.decisions_per_s, raw.images_per_s),
        "end_to_end_vs_naive": _ratio(e2e.decisions_per_s, naive.decisions_per_s),
    }


def _targets(ratios: Mapping[str, float]) -> dict[str, dict[str, object]]:
    wanted = {
        "end_to_end_vs_raw_triton": TARGET_VS_RAW_TRITON,
        "end_to_end_vs_naive": TARGET_VS_NAIVE,
    }
    return {
        name: {"target_at_least": target, "value": ratios[name], "met": ratios[name] >= target}
        for name, target in wanted.items()
    }


def machine_info() -> dict[str, object]:
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count() or 0
    memory_mb: float | None = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory_mb = round(int(line.split()[1]) / 1024, 1)
    return {
        "cpu_count": os.cpu_count(),
        "usable_cpus": usable,
        "memory_mb": memory_mb,
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": platform.processor() or None,
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
    }


def build_report(
    config: BenchConfig,
    images: Sequence[BenchImage],
    measurements: Measurements,
    started_at: datetime,
    runtime_s: float,
) -> dict[str, object]:
    """Everything a run measured, as a JSON-ready dict."""
    ratios = _ratios(measurements)
    publish = measurements.publish
    jpeg_sizes = [len(image.jpeg) for image in images]
    return {
        "started_at": started_at.isoformat(timespec="seconds"),
        "runtime_s": round(runtime_s, 1),
        "settings": measurements.settings,
        "machine": machine_info(),
        "images": {
            "source_photos": [image.name for image in images],
            "dimensions": [[image.width, image.height] for image in images],
            "megapixels": [round(image.width * image.height / 1e6, 2) for image in images],
            "jpeg_quality": JPEG_QUALITY,
            "noise_sigma": NOISE_SIGMA,
            "jpeg_bytes": jpeg_sizes,
            "jpeg_bytes_mean": round(float(np.mean(jpeg_sizes))),
            "event_bytes_mean": round(publish.bytes / publish.events) if publish else None,
        },
        "measurements": {
            "raw_triton": _as_json(measurements.raw_triton),
            "raw_triton_by_batch_size": [asdict(r) for r in measurements.raw_triton_by_batch_size],
            "publish_backlog": _as_json(publish),
            "end_to_end": _as_json(measurements.end_to_end),
            "latency": _as_json(measurements.latency),
            "naive": _as_json(measurements.naive),
        },
        "cpu_per_event_ms_single_thread": measurements.cpu_per_event_ms,
        "cpu_by_phase": {name: asdict(phase) for name, phase in measurements.phase_cpu.items()},
        "memory": measurements.resources,
        "ratios": ratios,
        "targets": _targets(ratios),
        "notes": [
            "Throughput is (decisions - 1) / (last decided_at - first decided_at), read back "
            "from the output topics: group joins and startup are excluded.",
            "The naive consumer calls the pipeline's own parse_event, decode_base64 and "
            "decode_image, so the comparison isolates batching and pipelining.",
            "Raw Triton repeats passes of `events` pre-decoded images until "
            "raw_triton_min_seconds have passed; raw_triton_by_batch_size does the same for "
            "smaller batches (a quarter of that time each) to show how Triton's cost per image "
            "depends on the batch size.",
            "Latency is Decision.timings.total_ms (created_at to decision) of events published "
            "at latency_load_fraction of the end-to-end throughput while the consumer ran.",
            "For the backlog runs, stage_means.queue_ms and total_ms mostly measure how long "
            "events waited in the backlog, not the pipeline's latency.",
            "The broker, tritonserver, the consumer and this harness share the machine's CPUs; "
            "cpu_by_phase shows each one's CPU seconds, other_processes the rest of the machine.",
        ],
    }


def _as_json(
    result: RawTritonResult | PublishResult | StreamResult | LatencyResult | None,
) -> dict[str, object] | None:
    return asdict(result) if result is not None else None


def write_report(report: Mapping[str, object], out_dir: Path) -> Path:
    """Write ``bench-<UTC timestamp>.json`` and ``latest.json``; return the first path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    text = json.dumps(report, indent=2, sort_keys=False) + "\n"
    path = out_dir / f"bench-{stamp}.json"
    path.write_text(text)
    (out_dir / "latest.json").write_text(text)
    return path


def format_table(
    config: BenchConfig, images: Sequence[BenchImage], m: Measurements, runtime_s: float
) -> str:
    """The human summary printed at the end of a run."""
    raw, e2e, naive, latency = m.raw_triton, m.end_to_end, m.naive, m.latency
    if raw is None or e2e is None or naive is None or latency is None:
        raise BenchmarkStalled("a measurement is missing; the run did not complete")
    ratios = _ratios(m)
    targets = _targets(ratios)
    consumer = m.settings.get("consumer", {})
    batching = consumer.get("batching", {}) if isinstance(consumer, dict) else {}
    imaging = consumer.get("imaging", {}) if isinstance(consumer, dict) else {}
    mean_mp = np.mean([i.width * i.height for i in images]) / 1e6
    mean_kb = np.mean([len(i.jpeg) for i in images]) / 1e3
    lines = [
        f"modstream bench: {config.events} events, {mean_mp:.1f} MP JPEGs ({mean_kb:.0f} kB), "
        f"batch {raw.batch_size} / wait {batching.get('max_wait_ms')} ms, "
        f"{raw.inflight_batches} in flight, {imaging.get('decode_workers')} decode workers, "
        f"{os.cpu_count()} CPUs",
        "",
        f"{'':24}{'throughput':>16}{'count':>8}{'seconds':>10}",
        f"{'raw Triton':24}{raw.images_per_s:>10.1f} img/s{raw.images:>8}{raw.seconds:>10.2f}",
        f"{'end to end':24}{e2e.decisions_per_s:>10.1f} dec/s{e2e.decisions:>8}"
        f"{e2e.first_to_last_decision_s:>10.2f}   all committed {e2e.all_committed_s:.1f}s "
        f"after start, mean batch {e2e.mean_batch_size}",
        f"{'naive consumer':24}{naive.decisions_per_s:>10.1f} dec/s{naive.decisions:>8}"
        f"{naive.first_to_last_decision_s:>10.2f}",
        "raw Triton by batch size: "
        + ", ".join(f"{r.batch_size}: {r.images_per_s:.0f}" for r in m.raw_triton_by_batch_size)
        + " img/s",
        "",
        f"latency at {latency.achieved_rate_per_s:.1f} events/s ({latency.decisions} events): "
        f"p50 {latency.p50_ms:.1f} ms, p99 {latency.p99_ms:.1f} ms, max {latency.max_ms:.1f} ms",
        "",
    ]
    for name, target in targets.items():
        verdict = "met" if target["met"] else "MISSED"
        lines.append(
            f"{name:28}{target['value']:>8.3f}   target >= {target['target_at_least']}: {verdict}"
        )
    if not all(t["met"] for t in targets.values()):
        lines.append(
            "note: targets are goals for the pipeline, not a pass/fail of this command; "
            "see cpu_by_phase in the JSON for where the time goes."
        )
    lines.append(f"runtime {runtime_s:.0f}s")
    return "\n".join(lines) + "\n"
