"""Build the pipeline from Settings and run it with its health/metrics server."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from consumer.app import Pipeline, PipelineLimits
from consumer.health import HealthServer, HealthState
from consumer.imaging import ImageFetcher, ImageLimits
from consumer.inference import TritonClassifier
from consumer.kafka_clients import build_consumer, build_producer, start_producer
from consumer.metrics import Metrics
from consumer.policy import TopicRoutes, load_policy
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
    policies = load_policy(settings.policy.path, topic_routes(settings.topics))
    metrics = metrics or Metrics()
    health = HealthState()
    server = HealthServer(settings.metrics.host, settings.metrics.port, metrics.registry, health)
    await server.start()
    if on_health_server is not None:
        on_health_server(server)
    producer = build_producer(settings.kafka)
    classifier = TritonClassifier(settings.triton)
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
        )
        await pipeline.run(stop)
    finally:
        # The producer flushes on stop: every decision already handed to it gets delivered.
        await producer.stop()
        await fetcher.close()
        await classifier.close()
        await server.close()
