"""The review page's Prometheus metrics (docs/operations.md, "Review").

Every replica reads the whole queue, so each reports the same depth and age: dashboards take
``max by (tenant)``. Verdicts and times are counted by the replica that took the verdict,
so they add up across replicas.
"""

from __future__ import annotations

from datetime import datetime

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from consumer.review.queue import ReviewQueue
from consumer.runtime.metrics import TenantLabels

_VERDICT_BUCKETS = (60, 300, 900, 1800, 3600, 7200, 14400, 43200, 86400, 172800)


class ReviewMetrics:
    def __init__(self, tenant_labels: TenantLabels) -> None:
        self.registry = CollectorRegistry()
        self._tenants = tenant_labels
        self.queue_depth = Gauge(
            "modstream_review_queue_depth",
            "Items waiting for a verdict.",
            ["tenant"],
            registry=self.registry,
        )
        self.oldest_age_seconds = Gauge(
            "modstream_review_oldest_age_seconds",
            "Age of the oldest waiting item since its decision; 0 when the queue is empty.",
            ["tenant"],
            registry=self.registry,
        )
        self.time_to_verdict_seconds = Histogram(
            "modstream_review_time_to_verdict_seconds",
            "From the model's decision to the reviewer's verdict.",
            ["tenant"],
            buckets=_VERDICT_BUCKETS,
            registry=self.registry,
        )
        self.verdicts = Counter(
            "modstream_review_verdicts_total",
            "Verdicts, by whether they overturned what the model leaned to.",
            ["tenant", "category", "outcome"],
            registry=self.registry,
        )
        self.produce_retries = Counter(
            "modstream_review_produce_retries_total",
            "Produce attempts (final decisions, verdicts) that failed and were retried.",
            registry=self.registry,
        )
        self.policy_reloads = Counter(
            "modstream_review_policy_reloads_total",
            "Policy changes (file or pushed) the page applied or refused.",
            ["result"],
            registry=self.registry,
        )
        self.auth_failures = Counter(
            "modstream_review_auth_failures_total",
            "Refused requests: missing or invalid credentials, another tenant, bad CSRF token.",
            ["reason"],
            registry=self.registry,
        )

    def verdict(
        self, tenant_id: str, category: str | None, overturned: bool, waited_s: float
    ) -> None:
        tenant = self._tenants.label(tenant_id)
        outcome = "overturned" if overturned else "confirmed"
        self.verdicts.labels(tenant, category or "none", outcome).inc()
        self.time_to_verdict_seconds.labels(tenant).observe(max(0.0, waited_s))

    def observe_queue(self, queue: ReviewQueue, now: datetime) -> None:
        """Set the gauges from the queue (before each scrape). Tenants past the label cap
        share ``other``: their depths add up, the oldest age is the oldest of them."""
        depth: dict[str, int] = {}
        age: dict[str, float] = {}
        for tenant_id in queue.tenants():
            tenant = self._tenants.label(tenant_id)
            depth[tenant] = depth.get(tenant, 0) + queue.depth(tenant_id)
            age[tenant] = max(age.get(tenant, 0.0), queue.oldest_age_s(tenant_id, now))
        for tenant, value in depth.items():
            self.queue_depth.labels(tenant).set(value)
            self.oldest_age_seconds.labels(tenant).set(age[tenant])
