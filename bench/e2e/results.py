"""What a run measures, phase by phase, and the error raised when a phase cannot finish."""

from __future__ import annotations

from dataclasses import dataclass, field

from consumer.errors import LocalServiceError


class BenchmarkStalled(LocalServiceError):
    """The consumer under test stopped making progress before the backlog was done."""


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
