"""What one run measures with: its arguments, and the consumer's settings on the run's topics."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from bench.e2e.images import BenchImage
from bench.local.tansu import TansuBroker
from bench.local.triton import TritonServer
from consumer.contract.events import Action
from consumer.moderation.policy import PolicySet
from consumer.runtime.settings import (
    BatchSettings,
    KafkaSettings,
    MetricsSettings,
    PolicySettings,
    Settings,
    TopicSettings,
    TritonSettings,
)

DEFAULT_MODEL: Final = "nsfw_mobilenet_v2"

TENANTS: Final = ("kids-app", "art-gallery", "acme")
# The latency phase paces events at this share of the measured end-to-end throughput.
LATENCY_LOAD_FRACTION: Final = 0.5

# Tansu holds group joins for session_timeout_ms / 2; these are the smallest values real
# Kafka accepts by default, so the consumer's settings stay deployable.
SESSION_TIMEOUT_MS: Final = 6000
HEARTBEAT_INTERVAL_MS: Final = 2000
# Room on top of the largest event for the record batch envelope and headers.
RECORD_OVERHEAD_BYTES: Final = 64 * 1024


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
    modes: tuple[str, ...] = ("threads",)
    """Consumer modes to run end to end; the first also gets the latency run."""
    decode_workers: int | None = None
    """Worker processes of the ``workers`` mode (default: one per usable core)."""
    raw: bool = False
    """Publish raw-image records (the JPEG as the value, the event fields as headers) instead
    of JSON events with the image inline as base64."""


def event_format(config: BenchConfig) -> str:
    return "raw" if config.raw else "json"


def stall_timeout_s(config: BenchConfig) -> float:
    """How long a consumer may take over the backlog before the run counts as stalled."""
    return 120.0 + config.events


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


def describe_settings(config: BenchConfig, settings: Settings) -> dict[str, object]:
    """The run's arguments and the consumer's settings, for the report's ``settings``."""
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
        "event_format": event_format(config),
        "modes": list(config.modes),
        "model": config.model_name,
        "model_repository": str(config.model_repository),
        "policy": str(config.policy_path),
        "consumer": consumer,
    }


def decision_topics(policies: PolicySet) -> list[str]:
    """Every topic the run's tenants can have a decision routed to."""
    rules = [policies.rules_for(tenant) for tenant in TENANTS]
    return sorted({r.topics.for_action(action) for r in rules for action in Action})
