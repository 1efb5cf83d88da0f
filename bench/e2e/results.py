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
    triton_cpu_ms_per_image: float | None = None
    """tritonserver's CPU (backend stubs included) over the timed passes, per image."""
    client_cpu_ms_per_image: float | None = None
    """This process's CPU (the gRPC client) over the timed passes, per image."""


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
    first_decision_at: float = 0.0
    """Unix time of the first decision (the start of the throughput window)."""
    last_decision_at: float = 0.0


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


@dataclass(frozen=True)
class CpuPerEvent:
    """CPU per decided event, by process group, between a run's first and last decision."""

    window_s: float
    events: int
    """Decisions after the first one: the events the window's CPU paid for."""
    by_process_ms: dict[str, float]
    """``consumer``, ``triton``, ``broker``, and for context ``harness`` and ``other_processes``."""
    total_ms: float
    """consumer + triton + broker: what deciding an event costs the machine."""
    cores_busy: dict[str, float]


@dataclass(frozen=True)
class LoopLag:
    """How late the pipeline's event loop woke from its 0.25 s sleeps
    (``modstream_event_loop_lag_seconds``), from its start to the end of the backlog."""

    wakeups: int
    mean_ms: float | None
    over_100ms_share: float | None
    """The share of wake-ups more than 100 ms late."""


@dataclass(frozen=True)
class ConsumerRun:
    """One consumer, in a process of its own, over the backlog."""

    name: str
    kind: str
    """``pipeline`` (modstream in one of its modes), ``peer`` or ``naive``."""
    settings: dict[str, object]
    stream: StreamResult
    cpu: CpuPerEvent
    whole_run: PhaseCpu
    """From starting the process until every offset was committed (startup included)."""
    peak_rss_mb: float | None
    """The consumer process's own peak (VmHWM)."""
    peak_group_rss_mb: float | None
    """The largest sampled sum over its process group (worker processes included)."""
    triton_mean_batch: float | None
    """Images per model execution in Triton during the run (dynamic batching included)."""
    loop_lag: LoopLag | None = None
    """The pipeline's event-loop lag over the backlog; None for the baselines."""


@dataclass(frozen=True)
class BrokerAlone:
    """The broker's cost per event when a consumer does nothing but fetch, produce, commit."""

    events: int
    window_s: float
    events_per_s: float
    broker_cpu_ms_per_event: float
    """Over the whole run, less the broker's idle CPU: the figure the machine limit uses."""
    broker_cpu_ms_per_event_window: float
    """Between the first and the last record produced (the first fetch falls before it)."""
    client_cpu_ms_per_event: float
    """The pass-through consumer's own CPU: Kafka fetch, produce and commit in aiokafka."""
    decision_bytes: int
    ingest_broker_cpu_ms_per_event: float | None
    """The broker's CPU per event while the backlog was published (not part of the limit)."""


@dataclass(frozen=True)
class Ceiling:
    """The machine limit: usable cores over the CPU each necessary stage costs per event."""

    cores: int
    parse_ms: float
    base64_ms: float
    decode_ms: float
    inference_ms: float
    inference_batch_size: int
    broker_ms: float
    per_event_ms: float
    decisions_per_s: float


@dataclass
class Measurements:
    settings: dict[str, object] = field(default_factory=dict)
    cpu_per_event_ms: dict[str, float] = field(default_factory=dict)
    """Each per-event step alone, on one thread: CPU (``*_cpu_ms``) and wall (``*_ms``)."""
    raw_triton: RawTritonResult | None = None
    raw_triton_by_batch_size: list[RawTritonResult] = field(default_factory=list)
    publish: PublishResult | None = None
    end_to_end: StreamResult | None = None
    """The first mode's run (the one the latency phase uses)."""
    latency: LatencyResult | None = None
    naive: StreamResult | None = None
    consumers: dict[str, ConsumerRun] = field(default_factory=dict)
    """Every consumer over the backlog: the pipeline in each mode, then ``peer`` and ``naive``."""
    modes: list[str] = field(default_factory=list)
    broker_alone: BrokerAlone | None = None
    ceiling: Ceiling | None = None
    phase_cpu: dict[str, PhaseCpu] = field(default_factory=dict)
    resources: dict[str, float | None] = field(default_factory=dict)
