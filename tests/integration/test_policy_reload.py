"""A policy file changed while events flow: later events follow the new policy and name it."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from bench.local.tansu import TansuBroker, ensure_topics
from bench.local.triton import TritonServer
from bench.samples import standins
from consumer.contract.events import Action, Decision
from consumer.moderation.policy import load_policy
from consumer.runtime.metrics import Metrics
from consumer.runtime.settings import PolicySettings, Settings
from consumer.service import topic_routes
from tests.integration.test_pipeline import (
    PARTITIONS,
    image_event,
    make_settings,
    output_topics,
    running,
    wait_committed,
    wait_for,
)
from tests.support.kafka_io import produce_all, read_until

pytestmark = pytest.mark.integration

LENIENT = "default:\n  thresholds:\n    sexual_explicit: {review: 0.40, block: 0.80}\n"
STRICT = "default:\n  thresholds:\n    sexual_explicit: {review: 0.40, block: 0.50}\n"


async def publish(settings: Settings, prefix: str, tenants: list[str], image: bytes) -> None:
    """One event per tenant listed, then wait until the consumer has committed them all."""
    kafka = settings.kafka
    records: list[tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]] = [
        (f"{prefix}-{i}".encode(), image_event(f"{prefix}-{i}", tenant, image), [])
        for i, tenant in enumerate(tenants)
    ]
    ends = await produce_all(kafka.bootstrap_servers, kafka.input_topic, records)
    await wait_committed(settings, ends, timeout_s=60)


def _write(path: Path, text: str) -> None:
    # Replace, as a ConfigMap update does, so a reader never sees a half-written file.
    staging = path.with_suffix(".tmp")
    staging.write_text(text)
    staging.replace(path)


async def test_policy_change_applies_to_later_events_and_a_bad_one_is_refused(
    broker: TansuBroker, triton: TritonServer, tmp_path: Path
) -> None:
    policy = tmp_path / "policy.yaml"
    _write(policy, LENIENT)
    settings = make_settings(broker, triton, max_batch_size=8, max_wait_ms=5)
    settings = settings.model_copy(
        update={"policy": PolicySettings(path=policy, reload_interval_s=0.2)}
    )
    kafka = settings.kafka
    outputs = output_topics(settings)
    await ensure_topics(
        kafka.bootstrap_servers, {kafka.input_topic: PARTITIONS, **{t: 1 for t in outputs}}
    )
    # Scores sexual_explicit 0.509: review under the lenient policy, block under the strict.
    image = next(s for s in standins() if s.name == "explicit-mid").data
    lenient_version = load_policy(policy, topic_routes(settings.topics)).version
    metrics = Metrics()

    def reloads(result: str) -> float:
        value = metrics.registry.get_sample_value(
            "modstream_policy_reloads_total", {"result": result}
        )
        return value or 0.0

    async with running(settings, metrics):
        await publish(settings, "before", ["acme"] * 10, image)
        await asyncio.to_thread(_write, policy, STRICT)

        async def applied() -> bool:
            return reloads("applied") == 1

        await wait_for(applied, timeout_s=10)
        await publish(settings, "after", ["acme"] * 10, image)
        await asyncio.to_thread(_write, policy, "default:\n  thresholds: [broken\n")

        async def refused() -> bool:
            return reloads("rejected") == 1

        await wait_for(refused, timeout_s=10)
        await publish(settings, "refused", ["acme"] * 10, image)

    strict_file = tmp_path / "strict.yaml"
    strict_file.write_text(STRICT)
    strict_version = load_policy(strict_file, topic_routes(settings.topics))
    messages = await read_until(kafka.bootstrap_servers, outputs, 30, timeout_s=20)
    decisions = [Decision.model_validate_json(m.value or b"") for m in messages]
    assert len(decisions) == 30
    for decision in decisions:
        if decision.event_id.startswith("before"):
            assert decision.action is Action.REVIEW
            assert decision.policy_version == lenient_version
        else:
            # After the change, and still after the refused update.
            assert decision.action is Action.BLOCK, decision.event_id
            assert decision.policy_version == strict_version.version
    assert lenient_version != strict_version.version


async def test_policy_topic_pushes_and_deletes_a_tenant_policy(
    broker: TansuBroker, triton: TritonServer, tmp_path: Path
) -> None:
    policy = tmp_path / "policy.yaml"
    _write(policy, LENIENT)
    settings = make_settings(broker, triton, max_batch_size=8, max_wait_ms=5)
    policy_topic = f"policies-{kafka_suffix(settings.kafka.input_topic)}"
    settings = settings.model_copy(
        update={"policy": PolicySettings(path=policy, reload_interval_s=0, topic=policy_topic)}
    )
    kafka = settings.kafka
    outputs = output_topics(settings)
    await ensure_topics(
        kafka.bootstrap_servers,
        {kafka.input_topic: PARTITIONS, policy_topic: 1, **{t: 1 for t in outputs}},
    )
    strict_tenant = b'{"thresholds": {"sexual_explicit": {"review": 0.1, "block": 0.5}}}'
    # Pushed before the consumer starts: it must be in force for the very first event.
    await produce_all(kafka.bootstrap_servers, policy_topic, [(b"acme", strict_tenant, [])])
    image = next(s for s in standins() if s.name == "explicit-mid").data
    metrics = Metrics()

    async with running(settings, metrics):
        await publish(settings, "pushed", ["acme", "other"] * 3, image)
        applied = metrics.registry.get_sample_value(
            "modstream_policy_reloads_total", {"result": "applied"}
        )
        # A tombstone deletes the pushed policy: acme is back on the file's default.
        await produce_all(kafka.bootstrap_servers, policy_topic, [(b"acme", None, [])])

        async def deleted() -> bool:
            value = metrics.registry.get_sample_value(
                "modstream_policy_reloads_total", {"result": "applied"}
            )
            return value is not None and applied is not None and value > applied

        await wait_for(deleted, timeout_s=15)
        await publish(settings, "deleted", ["acme", "other"] * 3, image)

    messages = await read_until(kafka.bootstrap_servers, outputs, 12, timeout_s=20)
    decisions = [Decision.model_validate_json(m.value or b"") for m in messages]
    assert len(decisions) == 12
    for decision in decisions:
        pushed = decision.event_id.startswith("pushed") and decision.tenant_id == "acme"
        expected = Action.BLOCK if pushed else Action.REVIEW
        assert decision.action is expected, (decision.event_id, decision.tenant_id)


def kafka_suffix(topic: str) -> str:
    return topic.rsplit("-", 1)[-1]
