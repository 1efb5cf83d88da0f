"""Every Prometheus metric of the consumer, defined once.

Names follow ``modstream_<noun>_<unit>``; tenant is a label whose cardinality is capped by
``TenantLabels`` (the first ``max_tenant_labels`` tenants seen, plus those named in the policy,
keep their own label; the rest are reported as ``other``).
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

OTHER_TENANT = "other"

_SCORE_BUCKETS = (0.01, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99)
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 128)


class TenantLabels:
    """Maps tenant ids to a bounded set of label values."""

    def __init__(self, max_labels: int, always: Iterable[str] = ()) -> None:
        self._max_labels = max_labels
        self._known: set[str] = set(always)
        self._seen: set[str] = set()

    def label(self, tenant_id: str) -> str:
        if tenant_id in self._known or tenant_id in self._seen:
            return tenant_id
        if len(self._seen) < self._max_labels:
            self._seen.add(tenant_id)
            return tenant_id
        return OTHER_TENANT

    def pin(self, tenants: Iterable[str]) -> None:
        self._known.update(tenants)


class Metrics:
    """The consumer's metrics in their own registry (one per pipeline, so tests can run several)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.events_consumed = Counter(
            "modstream_events_consumed_total",
            "Records read from the input topic.",
            ["topic"],
            registry=r,
        )
        self.decisions = Counter(
            "modstream_decisions_total",
            "Decisions produced and acknowledged, by action, tenant and the category of the "
            "rule that decided (none for allow).",
            ["action", "tenant", "category"],
            registry=r,
        )
        self.dead_letters = Counter(
            "modstream_dead_letters_total",
            "Records sent to the dead-letter topic, by reason code.",
            ["reason"],
            registry=r,
        )
        self.batch_size = Histogram(
            "modstream_batch_size", "Images per Triton request.", buckets=_BATCH_BUCKETS, registry=r
        )
        self.loop_lag_seconds = Histogram(
            "modstream_event_loop_lag_seconds",
            "How late the event loop woke from a 0.25 s sleep: what fetches, heartbeats and "
            "commits waited.",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
            registry=r,
        )
        self.decode_seconds = Histogram(
            "modstream_decode_duration_seconds",
            "Time to fetch, decode and resize one image.",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.inference_seconds = Histogram(
            "modstream_inference_duration_seconds",
            "Time of one Triton request (one batch).",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.end_to_end_seconds = Histogram(
            "modstream_end_to_end_latency_seconds",
            "From the event's created_at to its decision being acknowledged by Kafka.",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.triton_errors = Counter(
            "modstream_triton_errors_total",
            "Failed Triton calls, by gRPC code.",
            ["code"],
            registry=r,
        )
        self.produce_retries = Counter(
            "modstream_produce_retries_total",
            "Produce attempts that failed and were retried.",
            registry=r,
        )
        self.inflight_events = Gauge(
            "modstream_inflight_events", "Events read but not yet committed.", registry=r
        )
        self.inflight_bytes = Gauge(
            "modstream_inflight_bytes", "Bytes of records read but not yet decided.", registry=r
        )
        self.consumer_lag = Gauge(
            "modstream_consumer_lag",
            "Records of an assigned partition not decided yet: high watermark minus the fetch "
            "position, plus records in flight.",
            ["topic", "partition"],
            registry=r,
        )
        self.paused_partitions = Gauge(
            "modstream_paused_partitions", "Partitions paused by backpressure.", registry=r
        )
        self.circuit_open = Gauge(
            "modstream_triton_circuit_open",
            "1 while the Triton circuit breaker is open or probing, else 0.",
            registry=r,
        )
        self.revoked_dropped = Counter(
            "modstream_revoked_dropped_total",
            "In-flight events dropped unproduced because their partition was revoked; the new "
            "owner decides them.",
            registry=r,
        )
        self.commits = Counter(
            "modstream_commits_total", "Offset commits acknowledged by the broker.", registry=r
        )
        self.exemplar_matches = Counter(
            "modstream_exemplar_matches_total",
            "Images that matched a bank entry, by bank and by what matched (pdq, embedding).",
            ["bank", "by"],
            registry=r,
        )
        self.policy_reloads = Counter(
            "modstream_policy_reloads_total",
            "Changes of the policy file seen, by result (applied, rejected).",
            ["result"],
            registry=r,
        )
        self.heads_refused = Counter(
            "modstream_heads_refused_total",
            "Responses from a heads version that was refused (another backbone, or categories "
            "the policies cannot take); their events wait for a usable version.",
            registry=r,
        )
        self.head_scores = Histogram(
            "modstream_head_score",
            "Scores of custom categories, by heads version and category.",
            ["heads_version", "category"],
            buckets=_SCORE_BUCKETS,
            registry=r,
        )
        self.shadow_comparisons = Counter(
            "modstream_heads_shadow_total",
            "Events scored by the shadow heads version too, by whether the would-be action "
            "equals the live one (agree, differ), or lost (not compared or not delivered).",
            ["shadow_version", "result"],
            registry=r,
        )
        self.heads_info = Info("modstream_heads", "The heads version serving now.", registry=r)
        self.model_info = Info("modstream_model", "The model the consumer serves.", registry=r)
        self.policy_info = Info("modstream_policy", "The policy in force.", registry=r)
