"""Read the labels topic whole: the latest verdict per event id, as compaction would keep it.

The labels topic is compacted and keyed by event id, but compaction runs when the broker
decides: until then older verdicts on the same key are still there. Reading keeps the last
record per key (partition order; a key always lands on one partition), and a tombstone (no
value) removes the verdict, as compaction would.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass

from aiokafka.errors import KafkaError
from pydantic import ValidationError

from consumer.contract.events import ReviewVerdict
from consumer.errors import BrokerUnavailable, ConfigError
from consumer.runtime.kafka import build_reader, read_topics
from consumer.runtime.settings import KafkaSettings

logger = logging.getLogger(__name__)


class TopicMissing(ConfigError):
    """The topic to read does not exist on the broker."""


@dataclass(frozen=True)
class LabelRecord:
    """The parts of a labels-topic record the reader needs (aiokafka's record, or a test's)."""

    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


@dataclass(frozen=True)
class Verdicts:
    latest: dict[str, ReviewVerdict]
    """The last verdict per event id, in the order first seen."""
    replaced: int
    """Earlier verdicts a later one on the same key replaced (or a tombstone removed)."""
    problems: list[str]
    """Records that are not verdicts, one line each."""


def latest_verdicts(records: Iterable[LabelRecord], topic: str) -> Verdicts:
    """The last verdict per key; records that do not validate are reported, not fatal."""
    latest: dict[str, ReviewVerdict] = {}
    replaced = 0
    problems: list[str] = []
    for record in records:
        where = f"{topic}/{record.partition}@{record.offset}"
        if record.key is None:
            problems.append(f"{where}: no key (verdicts are keyed by event id)")
            continue
        try:
            key = record.key.decode("utf-8")
        except UnicodeDecodeError:
            problems.append(f"{where}: key is not UTF-8")
            continue
        if record.value is None:
            replaced += key in latest
            latest.pop(key, None)
            continue
        try:
            verdict = ReviewVerdict.model_validate_json(record.value)
        except ValidationError as exc:
            first = exc.errors()[0]
            field = ".".join(str(part) for part in first["loc"]) or "(value)"
            problems.append(f"{where}: not a ReviewVerdict ({field}: {first['msg']})")
            continue
        if verdict.event_id != key:
            problems.append(f"{where}: key {key!r} is not the verdict's event id")
            continue
        replaced += key in latest
        latest[key] = verdict
    return Verdicts(latest, replaced, problems)


async def read_verdicts(settings: KafkaSettings, topic: str, timeout_s: float = 60.0) -> Verdicts:
    """Every verdict on ``topic``, latest per event id.

    Raises TopicMissing, BrokerUnavailable, or TimeoutError when the topic is not read to its
    end in time.
    """
    await check_topic(settings, topic)
    records = await read_topics(settings, [topic], timeout_s=timeout_s)
    found = latest_verdicts(
        (LabelRecord(r.partition, r.offset, r.key, r.value) for r in records), topic
    )
    logger.info(
        "read %d records from %s: %d verdicts, %d replaced, %d not verdicts",
        len(records),
        topic,
        len(found.latest),
        found.replaced,
        len(found.problems),
    )
    return found


async def check_topic(settings: KafkaSettings, topic: str) -> None:
    """Raise TopicMissing unless ``topic`` exists, BrokerUnavailable when Kafka is away."""
    reader = build_reader(settings)
    try:
        await reader.start()
        topics = await reader.topics()
    except KafkaError as exc:
        raise BrokerUnavailable(
            f"cannot reach Kafka at {settings.bootstrap_servers}: {exc}"
        ) from exc
    finally:
        await reader.stop()
    if topic not in topics:
        raise TopicMissing(f"topic {topic} does not exist on {settings.bootstrap_servers}")
