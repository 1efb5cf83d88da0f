"""Policies as live data: the file is hot-reloaded, a compacted topic can push tenant policies.

The file gives the default and the tenants it names. Optionally, a compacted Kafka topic
(key = tenant id, value = that tenant's policy as JSON, a tombstone deletes it) lets a
control plane push tenant policies; a topic entry replaces the file's entry for that tenant.
Whenever either source changes, the combined document is validated and compiled; the result
is in force from the next decision, its content hash naming it on every decision. An update
that does not parse, validate or fit the served model's categories is refused with a logged
reason, and the policy in force stays.

A Kubernetes ConfigMap update swaps the mounted file atomically, so polling its content is
enough and works on every filesystem.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Callable
from pathlib import Path

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from prometheus_client import Counter
from pydantic import ValidationError

from consumer.errors import PolicyError
from consumer.moderation.policy import (
    ModelCategories,
    PolicyFile,
    PolicySet,
    TenantPolicySpec,
    TopicRoutes,
    compile_policy,
    parse_policy,
)

logger = logging.getLogger(__name__)


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


class LivePolicies:
    """The policies in force, for readers that look them up on every use (the review page)."""

    def __init__(self, policies: PolicySet) -> None:
        self.current = policies

    def replace(self, policies: PolicySet) -> None:
        self.current = policies


class PolicySources:
    """The file's document plus the topic's tenant entries, compiled on every change."""

    def __init__(
        self,
        document: PolicyFile,
        routes: TopicRoutes,
        *,
        categories: Callable[[], ModelCategories | None] | None,
        apply: Callable[[PolicySet], None],
        reloads: Counter,
    ) -> None:
        """``categories``: what the served model offers policies, None while it is not known
        yet; pass None instead of a function where no model is checked (the review page)."""
        self._document = document
        self._pushed: dict[str, TenantPolicySpec] = {}
        self._routes = routes
        self._categories = categories
        self._apply = apply
        self._reloads = reloads

    def model_known(self) -> bool:
        return self._categories is None or self._categories() is not None

    def try_apply(
        self, document: PolicyFile | None = None, pushed: dict[str, TenantPolicySpec] | None = None
    ) -> bool:
        """Put the candidate sources in force if they compile; keep the current ones if not."""
        document = self._document if document is None else document
        pushed = self._pushed if pushed is None else pushed
        categories = self._categories() if self._categories is not None else None
        try:
            tenants = {**document.tenants, **pushed}
            combined = document.model_copy(update={"tenants": tenants})
            policies = compile_policy(combined, self._routes)
            if categories is not None:
                policies.check_model(categories)
        except PolicyError as exc:
            self.refused(str(exc))
            return False
        self._document, self._pushed = document, pushed
        self._apply(policies)
        self._reloads.labels("applied").inc()
        logger.info("policy %s in force", policies.version)
        return True

    def refused(self, reason: str) -> None:
        self._reloads.labels("rejected").inc()
        logger.error("policy update refused, the previous policy stays in force: %s", reason)

    def push(self, tenant: str, spec: TenantPolicySpec | None) -> bool:
        pushed = dict(self._pushed)
        if spec is None:
            pushed.pop(tenant, None)
        else:
            pushed[tenant] = spec
        return self.try_apply(pushed=pushed)


class PolicyWatcher:
    """Polls the policy file and hands a changed one to the sources."""

    def __init__(
        self,
        path: Path,
        sources: PolicySources,
        *,
        initial_text: str,
    ) -> None:
        self._path = path
        self._sources = sources
        self._seen = _digest(initial_text)

    async def run(self, interval_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s)
            await self.check()

    async def check(self) -> bool:
        """Apply the file if it changed and is valid; return whether a new policy applies."""
        try:
            text = await asyncio.to_thread(self._path.read_text, encoding="utf-8")
        except OSError as exc:
            # A ConfigMap swap can briefly hide the file; the next poll sees the new one.
            logger.warning(
                "cannot read policy file %s, keeping the policy in force: %s", self._path, exc
            )
            return False
        digest = _digest(text)
        if digest == self._seen:
            return False
        if not self._sources.model_known():
            return False  # the model is not known yet; try again on the next poll
        self._seen = digest
        try:
            document = parse_policy(text, str(self._path))
        except PolicyError as exc:
            self._sources.refused(str(exc))
            return False
        return self._sources.try_apply(document=document)


class PolicyTopic:
    """Tails a compacted topic of tenant policies from its beginning, for as long as it runs."""

    def __init__(self, consumer: AIOKafkaConsumer, topic: str, sources: PolicySources) -> None:
        self._consumer = consumer
        self._topic = topic
        self._sources = sources

    async def run(self, loaded: asyncio.Event) -> None:
        """Apply every record; set ``loaded`` once the topic was read to its end at start."""
        await self._consumer.start()
        try:
            partitions = [TopicPartition(self._topic, p) for p in sorted(await self._partitions())]
            self._consumer.assign(partitions)
            await self._consumer.seek_to_beginning(*partitions)
            while True:
                batch = await self._consumer.getmany(timeout_ms=500)
                for records in batch.values():
                    for record in records:
                        self.apply(record)
                if not loaded.is_set() and await self._at_end(partitions):
                    loaded.set()
        finally:
            await self._consumer.stop()

    async def _partitions(self) -> set[int]:
        await self._consumer.topics()
        partitions = self._consumer.partitions_for_topic(self._topic)
        if not partitions:
            raise PolicyError(
                f"policy topic {self._topic} does not exist; create it (compacted) or unset "
                "MODSTREAM_POLICY__TOPIC"
            )
        return set(partitions)

    async def _at_end(self, partitions: list[TopicPartition]) -> bool:
        for tp in partitions:
            highwater = self._consumer.highwater(tp)
            if highwater is None or await self._consumer.position(tp) < highwater:
                return False
        return True

    def apply(self, record: ConsumerRecord[bytes, bytes]) -> bool:
        where = f"{record.topic}[{record.partition}]@{record.offset}"
        if record.key is None:
            self._sources.refused(f"{where}: a tenant policy record needs the tenant id as key")
            return False
        tenant = record.key.decode("utf-8", errors="replace")
        if record.value is None:
            return self._sources.push(tenant, None)
        try:
            spec = TenantPolicySpec.model_validate_json(record.value)
        except ValidationError as exc:
            first = exc.errors()[0]
            field = ".".join(str(part) for part in first["loc"]) or "(value)"
            self._sources.refused(f"{where}: tenant {tenant}: {field}: {first['msg']}")
            return False
        return self._sources.push(tenant, spec)
