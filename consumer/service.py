"""Build the pipeline from Settings and run it with its health/metrics server."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from consumer.app import Pipeline, PipelineLimits
from consumer.banks import BankSet
from consumer.health import HealthServer, HealthState
from consumer.imaging import ImageFetcher, ImageLimits
from consumer.inference import TritonClassifier
from consumer.kafka_clients import build_consumer, build_producer, start_producer
from consumer.metrics import Metrics
from consumer.policy import TopicRoutes, load_policy
from consumer.policy_watch import PolicyWatcher
from consumer.settings import Settings, TopicSettings
from consumer.sink import Sink

logger = logging.getLogger(__name__)


def topic_routes(topics: TopicSettings) -> TopicRoutes:
    return TopicRoutes(allow=topics.allow, review=topics.review, block=topics.block)


async def serve(
    settings: Settings,
    stop: asyncio.Event,
    *,
    metrics: Metrics | None = None,
    on_health_server: Callable[[HealthServer], None] | None = None,
) -> None:
    """Run the consumer until ``stop`` is set.

    Raises PolicyError, ModelMismatch or InferenceUnavailable before consuming anything when
    the configuration cannot work.
    """
    routes = topic_routes(settings.topics)
    policies = load_policy(settings.policy.path, routes)
    banks = BankSet.load(settings.banks.path)
    metrics = metrics or Metrics()
    health = HealthState()
    server = HealthServer(settings.metrics.host, settings.metrics.port, metrics.registry, health)
    await server.start()
    if on_health_server is not None:
        on_health_server(server)
    producer = build_producer(settings.kafka)
    classifier = TritonClassifier(settings.triton)
    pool = [
        TritonClassifier(
            settings.triton.model_copy(update={"model_name": name, "model_version": ""})
        )
        for name in settings.triton.pool_models
    ]
    fetcher = ImageFetcher(settings.imaging)
    try:
        await start_producer(producer, settings.kafka.bootstrap_servers)
        pipeline = Pipeline(
            consumer=build_consumer(settings.kafka),
            sink=Sink(producer, metrics),
            classifier=classifier,
            fetcher=fetcher,
            policies=policies,
            topics=settings.topics,
            batching=settings.batching,
            flow=settings.flow,
            triton=settings.triton,
            image_limits=ImageLimits.from_settings(settings.imaging),
            decode_workers=settings.imaging.decode_workers,
            limits=PipelineLimits(
                input_topic=settings.kafka.input_topic,
                max_poll_records=settings.kafka.max_poll_records,
                commit_interval_s=settings.kafka.commit_interval_ms / 1000,
                producer_max_request_size=settings.kafka.producer_max_request_size,
            ),
            metrics=metrics,
            max_tenant_labels=settings.metrics.max_tenant_labels,
            health=health,
            banks=banks,
            pool=pool,
        )
        watcher = PolicyWatcher(
            settings.policy.path,
            routes,
            categories=pipeline.model_categories,
            apply=pipeline.replace_policies,
            metrics=metrics,
            initial_text=settings.policy.path.read_text(encoding="utf-8"),
        )
        interval_s = settings.policy.reload_interval_s
        watching = asyncio.create_task(watcher.run(interval_s)) if interval_s > 0 else None
        try:
            await pipeline.run(stop)
        finally:
            if watching is not None:
                watching.cancel()
                await asyncio.gather(watching, return_exceptions=True)
    finally:
        # The producer flushes on stop: every decision already handed to it gets delivered.
        await producer.stop()
        await fetcher.close()
        await classifier.close()
        for member in pool:
            await member.close()
        await server.close()
