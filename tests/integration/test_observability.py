"""The Grafana dashboard and the alert rules against a real Prometheus scraping a real run.

Prometheus scrapes the consumer's /metrics and tritonserver's metrics while events flow; every
dashboard query must parse and return data, and every alert rule must load and evaluate. The
consumer scores through the ``moderation`` ensemble (backbone → heads) with a candidate heads
version shadowed, so the custom-category panels have data too.
"""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

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
    broker: TansuBroker, heads_triton: TritonServer, tmp_path: Path
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
            assert len(rules) == 8
            for rule in rules:
                assert rule["health"] == "ok", f"{rule['name']}: {rule.get('lastError')}"
                reply = await asyncio.to_thread(prometheus.api, "query", query=rule["query"])
                assert reply["status"] == "success", rule["name"]
    finally:
        await asyncio.to_thread(prometheus.stop)
