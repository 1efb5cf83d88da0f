"""Build the pipeline from Settings and run it with its health/metrics server."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from consumer.banks.store import BankSet
from consumer.errors import ConfigError, PolicyError
from consumer.imaging.decode import ImageLimits
from consumer.imaging.fetch import ImageFetcher
from consumer.imaging.unpack import DecodeJob
from consumer.imaging.workers import DecodePool
from consumer.inference.ensemble import BYTES_SUFFIX
from consumer.inference.model_check import ModelSpec
from consumer.inference.scorer import BreakerSettings, Scorer
from consumer.inference.shadow import ShadowHeads
from consumer.inference.triton import TritonClassifier
from consumer.moderation.heads import HeadsDescriptor, LiveHeads
from consumer.moderation.policy import (
    ModelCategories,
    TopicRoutes,
    compile_policy,
    parse_policy,
    read_policy_text,
)
from consumer.moderation.watch import PolicySources, PolicyTopic, PolicyWatcher
from consumer.pipeline.engine import Engine
from consumer.pipeline.flow import FlowControl
from consumer.pipeline.offsets import OffsetTracker
from consumer.pipeline.outcomes import KafkaOutcomes
from consumer.pipeline.ports import EngineSettings
from consumer.pipeline.prepare import Preparer
from consumer.pipeline.sink import Sink
from consumer.pipeline.source import KafkaSource
from consumer.runtime.health import HealthServer, HealthState
from consumer.runtime.kafka import build_consumer, build_producer, build_reader, start_producer
from consumer.runtime.loop_lag import watch_loop_lag
from consumer.runtime.metrics import Metrics, TenantLabels
from consumer.runtime.retry import KAFKA_FETCH, inference_policy
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
    scorer = Scorer(
        TritonClassifier(settings.triton),
        [
            TritonClassifier(
                settings.triton.model_copy(update={"model_name": name, "model_version": ""})
            )
            for name in settings.triton.pool_models
        ],
        max_batch_size=settings.batching.max_batch_size,
        retry=inference_policy(settings.triton),
        breaker=BreakerSettings(
            settings.triton.breaker_failure_threshold, settings.triton.breaker_open_s
        ),
        metrics=metrics,
        health=health,
    )
    fetcher = ImageFetcher(settings.imaging)
    source = KafkaSource(
        build_consumer(settings.kafka), settings.kafka.input_topic, settings.flow.close_timeout_s
    )
    pool = DecodePool(settings.imaging.decode_workers, settings.imaging.decode_pool, settings.log)
    try:
        await start_producer(producer, settings.kafka.bootstrap_servers)
        await pool.warm_up()
        spec = await scorer.connect(_bytes_model(settings))
        if not spec.has_heads:
            # With heads, the check waits for the heads' categories (learn_heads below).
            policies.check_model(ModelCategories(spec.class_names, spec.prototype_categories))
        _use_model(spec, banks, metrics)
        metrics.policy_info.info({"version": policies.version})
        live_heads = (
            LiveHeads(
                spec.backbone_sha256,
                spec.class_names,
                check=lambda heads: outcomes.check_heads(heads),
                on_change=lambda heads: _heads_changed(heads, metrics),
            )
            if spec.has_heads
            else None
        )
        outcomes = KafkaOutcomes(
            sink=Sink(producer, metrics.produce_retries),
            spec=spec,
            policies=policies,
            banks=banks,
            dead_letter_topic=settings.topics.dead_letter,
            max_request_size=settings.kafka.producer_max_request_size,
            metrics=metrics,
            tenant_labels=TenantLabels(settings.metrics.max_tenant_labels, policies.tenants),
            heads=live_heads,
            shadow_topic=settings.topics.heads_shadow if settings.heads.shadow_version else None,
        )
        shadow = _shadow(settings, spec)
        if live_heads is not None:
            await scorer.learn_heads(live_heads, spec.input_size, shadow)
        engine = Engine(
            source=source,
            preparer=Preparer(
                fetcher=fetcher,
                pool=pool,
                job=DecodeJob(
                    input_size=spec.input_size,
                    limits=ImageLimits.from_settings(settings.imaging),
                    with_pdq=bool(banks),
                    in_triton=settings.imaging.decode_in == "triton",
                    triton_formats=scorer.encoded_formats,
                ),
                metrics=metrics,
            ),
            scorer=scorer,
            outcomes=outcomes,
            tracker=OffsetTracker(),
            flow=FlowControl(settings.flow, metrics),
            settings=_engine_settings(settings),
            metrics=metrics,
            health=health,
        )
        sources = PolicySources(
            policy_document,
            routes,
            categories=outcomes.model_categories,
            apply=outcomes.replace_policies,
            reloads=metrics.policy_reloads,
        )
        watcher = PolicyWatcher(settings.policy.path, sources, initial_text=policy_text)
        background: list[asyncio.Task[None]] = [
            asyncio.create_task(watch_loop_lag(metrics.loop_lag_seconds))
        ]
        interval_s = settings.policy.reload_interval_s
        if interval_s > 0:
            background.append(asyncio.create_task(watcher.run(interval_s)))
        try:
            if settings.policy.topic is not None:
                background.append(await follow_policy_topic(settings, sources))
            await engine.run(stop)
        finally:
            for task in background:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)
    finally:
        # Leave the group only after the engine committed; then flush the producer (stop
        # delivers every record already handed to it).
        await source.close()
        pool.close()
        await producer.stop()
        await fetcher.close()
        await scorer.close()
        await server.close()


def _bytes_model(settings: Settings) -> str | None:
    """The ensemble taking encoded images, when Triton decodes; None when the consumer does."""
    if settings.imaging.decode_in == "consumer":
        return None
    if settings.banks.path is not None:
        logger.warning(
            "images decoded in Triton have no PDQ hash: exemplar banks match by embedding only"
        )
    return settings.triton.bytes_model_name or f"{settings.triton.model_name}{BYTES_SUFFIX}"


def _engine_settings(settings: Settings) -> EngineSettings:
    return EngineSettings(
        max_batch_size=settings.batching.max_batch_size,
        max_batch_wait_s=settings.batching.max_wait_ms / 1000,
        max_inflight_batches=settings.triton.max_inflight_batches,
        max_poll_records=settings.kafka.max_poll_records,
        commit_interval_s=settings.kafka.commit_interval_ms / 1000,
        drain_timeout_s=settings.flow.drain_timeout_s,
        revoke_grace_s=settings.flow.revoke_grace_s,
        fetch_retry=KAFKA_FETCH,
    )


def _shadow(settings: Settings, spec: ModelSpec) -> ShadowHeads | None:
    version = settings.heads.shadow_version
    if version is None:
        return None
    if spec.heads_model is None or not spec.has_heads:
        raise ConfigError(
            f"MODSTREAM_HEADS__SHADOW_VERSION is set but {spec.name} has no heads model; point "
            "MODSTREAM_TRITON__MODEL_NAME at the moderation ensemble"
        )
    shadow = ShadowHeads(
        settings.triton, spec.heads_model, version, settings.batching.max_batch_size
    )
    shadow.expect(spec.backbone_sha256, spec.class_names)
    logger.info("shadowing heads %s version %s", spec.heads_model, version)
    return shadow


def _heads_changed(heads: HeadsDescriptor, metrics: Metrics) -> None:
    metrics.heads_info.info(
        {
            "model": heads.heads_model,
            "version": heads.version,
            "categories": ",".join(f"{h.name}:{h.tenant or '*'}" for h in heads.categories),
        }
    )


def _use_model(spec: ModelSpec, banks: BankSet, metrics: Metrics) -> None:
    metrics.model_info.info({"name": spec.name, "version": spec.version})
    for bank_id in banks.use_model(spec.name, spec.version, spec.backbone_sha256):
        logger.warning(
            "bank %s was built with another model version or backbone: matched by PDQ only; "
            "rebuild its embeddings with `modstream bank add` against %s version %s",
            bank_id,
            spec.name,
            spec.version,
        )


async def follow_policy_topic(settings: Settings, sources: PolicySources) -> asyncio.Task[None]:
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
