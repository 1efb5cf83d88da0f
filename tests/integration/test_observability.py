"""The Grafana dashboard and the alert rules against a real Prometheus scraping a real run.

Prometheus scrapes the consumer's /metrics and tritonserver's metrics while events flow; every
dashboard query must parse and return data, and every alert rule must load and evaluate. The
consumer scores through the ``moderation`` ensemble (backbone → heads) with a candidate heads
version shadowed, so the custom-category panels have data too. The review page does not run
here: a third target serves its series as a review in progress would, so the review panels are
checked against the same Prometheus.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from bench.heads_overhead import random_heads
from bench.local.process import free_port
from bench.local.tansu import TansuBroker, ensure_topics
from bench.local.triton import TritonServer
from bench.samples import photos, standins
from consumer.runtime.settings import HeadsSettings, MetricsSettings
from tests.integration.conftest import SERVED_MODEL
from tests.integration.test_pipeline import (
    PARTITIONS,
    TENANTS,
    image_event,
    make_settings,
    output_topics,
    running,
    wait_committed,
    wait_for,
)
from tests.support.kafka_io import produce_all
from tests.support.paths import DEPLOY, TRITON_REPO
from tests.support.prometheus import Prometheus
from training.heads.export import export_heads

pytestmark = pytest.mark.integration

# What Grafana substitutes before a query reaches Prometheus.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$tenant": ".*"}
ENSEMBLE = "moderation"
LIVE_HEADS, SHADOW_HEADS = "1", "2"
# A platform head with a threshold, so that custom categories decide some events. The heads'
# weights are random: it fires on many images, which is all this test needs.
HEAD_THRESHOLD = "    head_0: {review: 0.5, block: 0.95}\n"
# The review page's histogram buckets (consumer/review/metrics.py) and, cycled through, how
# long the synthetic verdicts took.
VERDICT_BUCKETS = (60, 300, 900, 1800, 3600, 7200, 14400, 43200, 86400, 172800)
VERDICT_DELAYS_S = (120, 700, 2400, 5000, 20000)


class ReviewInProgress(Collector):
    """The review page's metrics (names, labels and buckets as it exports them) for a review
    going on since the collector was made: per tenant, a queue of a few dozen items, verdicts
    coming in once a second, one in four overturned, and a few refused requests."""

    def __init__(self, tenants: tuple[str, ...]) -> None:
        self._tenants = tenants
        self._start = time.monotonic()

    def collect(self) -> Iterator[Metric]:
        elapsed = time.monotonic() - self._start
        verdicts = int(elapsed) + 1
        depth = GaugeMetricFamily(
            "modstream_review_queue_depth", "Items waiting for a verdict", labels=["tenant"]
        )
        oldest = GaugeMetricFamily(
            "modstream_review_oldest_age_seconds", "Age of the oldest item", labels=["tenant"]
        )
        to_verdict = HistogramMetricFamily(
            "modstream_review_time_to_verdict_seconds", "Decision to verdict", labels=["tenant"]
        )
        outcomes = CounterMetricFamily(
            "modstream_review_verdicts",
            "Verdicts",
            labels=["tenant", "category", "outcome"],
        )
        refused = CounterMetricFamily(
            "modstream_review_auth_failures", "Refused requests", labels=["reason"]
        )
        delays = list(itertools.islice(itertools.cycle(VERDICT_DELAYS_S), verdicts))
        buckets = [(str(float(le)), sum(d <= le for d in delays)) for le in VERDICT_BUCKETS]
        for tenant in self._tenants:
            depth.add_metric([tenant], 40 + verdicts)
            oldest.add_metric([tenant], 3600 + elapsed)
            to_verdict.add_metric([tenant], [*buckets, ("+Inf", verdicts)], sum(delays))
            overturned = verdicts // 4
            outcomes.add_metric([tenant, "suggestive", "confirmed"], verdicts - overturned)
            outcomes.add_metric([tenant, "suggestive", "overturned"], overturned)
            outcomes.add_metric([tenant, "none", "confirmed"], verdicts)
        for reason in ("missing", "invalid", "forbidden", "csrf"):
            refused.add_metric([reason], verdicts // 2)
        yield from (depth, oldest, to_verdict, outcomes, refused)


@pytest.fixture
def review_page() -> Iterator[str]:
    """A scrape target serving ReviewInProgress; its address."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ReviewInProgress(TENANTS))
    port = free_port()
    server, thread = start_http_server(port, addr="127.0.0.1", registry=registry)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture(scope="module")
def heads_triton(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonServer]:
    """Triton serving the backbone, two versions of random heads and the ensemble (live: 1)."""
    repo = tmp_path_factory.mktemp("observability-repo")
    shutil.copytree(TRITON_REPO / SERVED_MODEL, repo / SERVED_MODEL)
    live = export_heads(repo, random_heads(repo, 3, seed=0))
    shadow = export_heads(repo, random_heads(repo, 3, seed=1))
    assert (live.version, live.pinned, shadow.version) == (LIVE_HEADS, True, SHADOW_HEADS)
    server = TritonServer(
        repo,
        work_dir=tmp_path_factory.mktemp("triton-observability"),
        models=[SERVED_MODEL, "heads", ENSEMBLE],
    )
    server.start(deadline_s=120)
    try:
        yield server
    finally:
        server.close()


def _dashboard_queries() -> list[tuple[str, str]]:
    dashboard = json.loads((DEPLOY / "grafana" / "modstream.json").read_text())
    queries = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"]
            for variable, value in GRAFANA_VARIABLES.items():
                expr = expr.replace(variable, value)
            queries.append((f"{panel['title']} / {target['refId']}", expr))
    return queries


async def test_dashboard_queries_return_data_and_alert_rules_evaluate(
    broker: TansuBroker, heads_triton: TritonServer, review_page: str, tmp_path: Path
) -> None:
    settings = make_settings(broker, heads_triton, max_batch_size=8, max_wait_ms=5)
    policy = settings.policy.path.read_text()
    thresholds = "\n  thresholds:\n"
    assert policy.count(thresholds) == 1, "the default policy's thresholds moved"
    settings.policy.path.write_text(policy.replace(thresholds, thresholds + HEAD_THRESHOLD))
    topics = settings.topics.model_copy(
        update={"heads_shadow": settings.topics.dead_letter.replace("dlq", "shadow")}
    )
    settings = settings.model_copy(
        update={
            "metrics": MetricsSettings(host="127.0.0.1", port=free_port()),
            "triton": settings.triton.model_copy(update={"model_name": ENSEMBLE}),
            "heads": HeadsSettings(shadow_version=SHADOW_HEADS),
            "topics": topics,
        }
    )
    kafka = settings.kafka
    await ensure_topics(
        kafka.bootstrap_servers,
        {
            kafka.input_topic: PARTITIONS,
            settings.topics.heads_shadow: 1,
            **{t: 1 for t in output_topics(settings)},
        },
    )
    prometheus = Prometheus(
        tmp_path / "prometheus",
        {
            "modstream": f"127.0.0.1:{settings.metrics.port}",
            "triton": f"127.0.0.1:{heads_triton.metrics_port}",
            "review": review_page,
        },
        [DEPLOY / "prometheus" / "alerts.yaml"],
    )
    await asyncio.to_thread(prometheus.start)
    try:
        samples = [*photos(), *standins()]
        records: list[tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]] = []
        for round_ in range(3):
            for tenant in TENANTS:
                for sample in samples:
                    event_id = f"{tenant}-{sample.name}-{round_}"
                    records.append(
                        (event_id.encode(), image_event(event_id, tenant, sample.data), [])
                    )
        records += [(f"bad-{i}".encode(), b"{not json", []) for i in range(10)]
        ends = await produce_all(kafka.bootstrap_servers, kafka.input_topic, records)

        async with running(settings):
            await wait_committed(settings, ends, timeout_s=120)

            async def scraped_everything() -> bool:
                reply = await asyncio.to_thread(
                    prometheus.api, "query", query="sum(modstream_decisions_total)"
                )
                result = reply["data"]["result"]
                return bool(result) and float(result[0]["value"][1]) >= len(records) - 10

            await wait_for(scraped_everything, timeout_s=30)
            # A few more scrapes after the last decision, so rates span several samples.
            await asyncio.sleep(3)
            empty: list[str] = []
            for name, expr in _dashboard_queries():
                reply = await asyncio.to_thread(prometheus.api, "query", query=expr)
                assert reply["status"] == "success", f"{name}: {expr}: {reply.get('error')}"
                if not reply["data"]["result"]:
                    empty.append(f"{name}: {expr}")
            assert not empty, "dashboard queries without data:\n" + "\n".join(empty)

            rules: list[dict[str, Any]] = [
                rule
                for group in (await asyncio.to_thread(prometheus.api, "rules"))["data"]["groups"]
                for rule in group["rules"]
            ]
            alerts = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yaml").read_text())
            assert sorted(rule["name"] for rule in rules) == sorted(
                rule["alert"] for group in alerts["groups"] for rule in group["rules"]
            )
            for rule in rules:
                assert rule["health"] == "ok", f"{rule['name']}: {rule.get('lastError')}"
                reply = await asyncio.to_thread(prometheus.api, "query", query=rule["query"])
                assert reply["status"] == "success", rule["name"]
    finally:
        await asyncio.to_thread(prometheus.stop)
