"""``modstream review``: the page, its queue feed and its metrics, until stopped.

Start-up refuses what cannot work (no reviewers file, no policies, Kafka unreachable) with a
one-line reason; the page answers 503 until the queue is loaded to the end of its topics,
and /readyz says the same to Kubernetes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Callable
from datetime import UTC, datetime

import uvicorn

from consumer.errors import ConfigError
from consumer.imaging.decode import ImageLimits
from consumer.imaging.fetch import ImageFetcher
from consumer.moderation.policy import PolicySet, compile_policy, parse_policy, read_policy_text
from consumer.moderation.watch import LivePolicies, PolicySources, PolicyWatcher
from consumer.pipeline.sink import Sink
from consumer.review.access import Gate
from consumer.review.app import build_app
from consumer.review.auth import CsrfTokens, ReviewerDirectory, SessionCookies
from consumer.review.feed import QueueFeed
from consumer.review.metrics import ReviewMetrics
from consumer.review.pages import Pages
from consumer.review.queue import ReviewQueue
from consumer.review.records import ImageSource, RecordReader
from consumer.review.saliency import SaliencyModel
from consumer.review.state import Review
from consumer.review.verdicts import VerdictPublisher
from consumer.runtime.health import HealthServer, HealthState
from consumer.runtime.kafka import (
    build_producer,
    build_reader,
    ensure_compacted_topics,
    start_producer,
)
from consumer.runtime.metrics import TenantLabels
from consumer.runtime.settings import Settings
from consumer.service import follow_policy_topic, topic_routes

logger = logging.getLogger(__name__)

# A reviewer signs in once a working day.
SESSION_LIFETIME_S = 12 * 3600


class ReviewHealth(HealthState):
    """Ready once the queue is loaded; the page needs no Triton."""

    def __init__(self, loaded: Callable[[], bool]) -> None:
        super().__init__()
        self._loaded = loaded

    def ready(self) -> bool:
        return self.started and self._loaded() and not self.stopping

    def describe(self) -> str:
        return f"started={self.started} queue_loaded={self._loaded()} stopping={self.stopping}"


def review_topics(settings: Settings, policies: PolicySet) -> list[str]:
    """The configured review topics, or every tenant's review topic in the policies."""
    if settings.review.topics:
        return list(settings.review.topics)
    rules = [policies.default, *policies.tenants.values()]
    return sorted({tenant_rules.topics.review for tenant_rules in rules})


async def serve_review(
    settings: Settings,
    stop: asyncio.Event,
    *,
    on_started: Callable[[int, int], None] | None = None,
) -> None:
    """Serve the page until ``stop`` is set; ``on_started(page_port, metrics_port)`` is
    called once both listen (tests use port 0)."""
    config = settings.review
    routes = topic_routes(settings.topics)
    policy_text = read_policy_text(settings.policy.path)
    document = parse_policy(policy_text, str(settings.policy.path))
    policies = LivePolicies(compile_policy(document, routes))
    reviewers = ReviewerDirectory(config.reviewers_file)
    saliency = (
        SaliencyModel.load(config.saliency_repository, settings.triton.model_name)
        if config.saliency_repository is not None
        else None
    )
    secret = (
        config.csrf_secret.get_secret_value().encode()
        if config.csrf_secret is not None
        else secrets.token_bytes(32)
    )
    if config.csrf_secret is None:
        logger.warning("MODSTREAM_REVIEW__CSRF_SECRET is not set: forms only work on this replica")
    await ensure_compacted_topics(
        settings.kafka,
        [settings.topics.labels, settings.topics.review_claims],
        config.labels_partitions,
        config.labels_replication_factor,
    )
    metrics = ReviewMetrics(
        TenantLabels(settings.metrics.max_tenant_labels, policies.current.tenants)
    )
    queue = ReviewQueue(config.max_items_per_tenant)
    producer = build_producer(settings.kafka)
    await start_producer(producer, settings.kafka.bootstrap_servers)
    feed_consumer = build_reader(settings.kafka)
    record_consumer = build_reader(settings.kafka)
    fetcher = ImageFetcher(settings.imaging)
    limits = ImageLimits.from_settings(settings.imaging)
    feed = QueueFeed(
        feed_consumer,
        queue,
        lambda: review_topics(settings, policies.current),
        settings.topics.labels,
        settings.topics.review_claims,
    )
    # Tenants' topics and thresholds follow the same live sources as the consumer's (the file,
    # and pushed policies); the page checks no model, so every valid policy applies.
    sources = PolicySources(
        document, routes, categories=None, apply=policies.replace, reloads=metrics.policy_reloads
    )
    health = ReviewHealth(feed.caught_up.is_set)
    health_server = HealthServer(
        settings.metrics.host,
        settings.metrics.port,
        metrics.registry,
        health,
        render_extra=lambda: metrics.observe_queue(queue, datetime.now(UTC)),
    )
    tasks: list[asyncio.Task[None]] = []
    server: uvicorn.Server | None = None
    try:
        await feed_consumer.start()
        await record_consumer.start()
        reader = RecordReader(record_consumer, config.fetch_record_timeout_s)
        review = Review(
            queue=queue,
            gate=Gate(
                reviewers,
                CsrfTokens(secret),
                SessionCookies(secret, SESSION_LIFETIME_S),
                metrics,
                config.auth,
                config.proxy_user_header,
                secure_cookies=config.secure_cookies,
            ),
            pages=Pages(),
            publisher=VerdictPublisher(
                Sink(producer, metrics.produce_retries),
                policies,
                settings.topics.labels,
                settings.topics.review_claims,
            ),
            reader=reader,
            images=ImageSource(reader, fetcher, limits),
            limits=limits,
            policies=policies,
            metrics=metrics,
            saliency=saliency,
            display_max_side=config.display_max_side,
            ready=feed.caught_up.is_set,
            claim_s=config.claim_s,
        )
        await health_server.start()
        if settings.policy.reload_interval_s > 0:
            watcher = PolicyWatcher(settings.policy.path, sources, initial_text=policy_text)
            tasks.append(
                asyncio.create_task(
                    watcher.run(settings.policy.reload_interval_s), name="review-policy-file"
                )
            )
        if settings.policy.topic is not None:
            tasks.append(await follow_policy_topic(settings, sources))
        tasks.append(asyncio.create_task(feed.run(), name="review-feed"))
        server = uvicorn.Server(
            uvicorn.Config(
                build_app(review),
                host=config.host,
                port=config.port,
                log_config=None,
                access_log=False,
                lifespan="off",
                server_header=False,
            )
        )
        tasks.append(asyncio.create_task(server.serve(), name="review-http"))
        while not server.started:
            if tasks[-1].done():
                await tasks[-1]
                raise ConfigError(
                    f"the review page could not listen on {config.host}:{config.port}"
                )
            await asyncio.sleep(0.05)
        health.started = True
        page_port = server.servers[0].sockets[0].getsockname()[1]
        logger.info(
            "review page on %s:%d, review topics %s",
            config.host,
            page_port,
            ", ".join(review_topics(settings, policies.current)),
        )
        if on_started is not None:
            on_started(page_port, health_server.port)
        stopped = asyncio.create_task(stop.wait())
        await asyncio.wait([stopped, *tasks], return_when=asyncio.FIRST_COMPLETED)
        stopped.cancel()
        for task in tasks:
            if task.done() and not task.cancelled() and task.exception() is not None:
                raise task.exception()  # type: ignore[misc]
    finally:
        health.stopping = True
        if server is not None:
            server.should_exit = True
        for task in tasks:
            if task.get_name() == "review-http":
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(task, timeout=5)
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await fetcher.close()
        await feed_consumer.stop()
        await record_consumer.stop()
        await producer.stop()
        await health_server.close()
