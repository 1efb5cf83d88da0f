"""Build the pipeline from Settings and run it with its health/metrics server."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from consumer.banks.store import BankSet
from consumer.errors import PolicyError
from consumer.imaging.decode import ImageLimits
from consumer.imaging.fetch import ImageFetcher
from consumer.inference.triton import TritonClassifier
from consumer.moderation.policy import TopicRoutes, compile_policy, parse_policy, read_policy_text
from consumer.moderation.watch import PolicySources, PolicyTopic, PolicyWatcher
from consumer.pipeline.engine import Pipeline, PipelineLimits
from consumer.pipeline.sink import Sink
from consumer.runtime.health import HealthServer, HealthState
from consumer.runtime.kafka import build_consumer, build_producer, build_reader, start_producer
from consumer.runtime.metrics import Metrics
from consumer.runtime.settings import Settings, TopicSettings

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
    # Read and parsed once: the compiled policy starts the pipeline, the document seeds the
    # live sources, the text tells the file watcher what it has already seen.
    policy_text = read_policy_text(settings.policy.path)
    policy_document = parse_policy(policy_text, str(settings.policy.path))
    policies = compile_policy(policy_document, routes)
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
        sources = PolicySources(
            policy_document,
            routes,
            categories=pipeline.model_categories,
            apply=pipeline.replace_policies,
            metrics=metrics,
        )
        watcher = PolicyWatcher(settings.policy.path, sources, initial_text=policy_text)
        background: list[asyncio.Task[None]] = []
        interval_s = settings.policy.reload_interval_s
        if interval_s > 0:
            background.append(asyncio.create_task(watcher.run(interval_s)))
        try:
            if settings.policy.topic is not None:
                background.append(await _follow_policy_topic(settings, sources))
            await pipeline.run(stop)
        finally:
            for task in background:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)
    finally:
        # The producer flushes on stop: every decision already handed to it gets delivered.
        await producer.stop()
        await fetcher.close()
        await classifier.close()
        for member in pool:
            await member.close()
        await server.close()


async def _follow_policy_topic(settings: Settings, sources: PolicySources) -> asyncio.Task[None]:
    """Read the policy topic to its end before consuming, then keep following it."""
    topic = settings.policy.topic
    if topic is None:
        raise ValueError("no policy topic configured")
    loaded = asyncio.Event()
    task = asyncio.create_task(
        PolicyTopic(build_reader(settings.kafka), topic, sources).run(loaded)
    )
    waiting = asyncio.create_task(loaded.wait())
    timeout_s = settings.policy.topic_load_timeout_s
    await asyncio.wait({task, waiting}, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
    waiting.cancel()
    if task.done():
        task.result()  # the reason it stopped, e.g. a missing topic
    if not loaded.is_set():
        task.cancel()
        raise PolicyError(
            f"policy topic {topic} was not read to its end within {timeout_s:.0f}s; check "
            "the broker (MODSTREAM_POLICY__TOPIC_LOAD_TIMEOUT_S)"
        )
    logger.info("policy topic %s loaded", topic)
    return task
