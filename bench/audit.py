"""Prove the delivery guarantee on a real cluster: every input event has an outcome.

``audit()`` reads the input topic and every output topic to their ends and matches them: a
decision covers the input record whose ``event_id`` it names, a dead letter covers the record
at its ``source`` partition and offset. It reports records without any outcome (must be 0),
how many outcomes are duplicates (allowed by at-least-once; downstream drops them by
``event_id``) and event ids whose duplicates disagree (must be 0 for a deterministic model
and policy).
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

from aiokafka import ConsumerRecord

from consumer.runtime.kafka import read_topics
from consumer.runtime.settings import KafkaSettings


@dataclass(frozen=True)
class Outcome:
    topic: str
    action: str
    """"dead_letter" or the decision's action."""


@dataclass
class AuditReport:
    input_records: int = 0
    outcomes: int = 0
    decisions: int = 0
    dead_letters: int = 0
    missing: list[tuple[int, int]] = field(default_factory=list)
    """(partition, offset) of input records with no outcome at all."""
    duplicates: int = 0
    """Outcomes beyond the first for the same input record."""
    conflicting: list[str] = field(default_factory=list)
    """Event ids whose outcomes disagree on topic or action."""

    @property
    def ok(self) -> bool:
        return not self.missing and not self.conflicting

    def summary(self) -> str:
        return (
            f"{self.input_records} input records, {self.outcomes} outcomes "
            f"({self.decisions} decisions, {self.dead_letters} dead letters): "
            f"{len(self.missing)} without an outcome, {self.duplicates} duplicates, "
            f"{len(self.conflicting)} conflicting"
        )


async def read_to_end(
    bootstrap: str, topics: Sequence[str], timeout_s: float = 60.0
) -> list[ConsumerRecord[bytes, bytes]]:
    """Every record of ``topics`` from the beginning to the high watermark seen at the start."""
    settings = KafkaSettings(
        bootstrap_servers=bootstrap, max_partition_fetch_bytes=32 << 20, fetch_max_bytes=64 << 20
    )
    return await read_topics(settings, topics, timeout_s)


def _event_id(value: bytes | None) -> str | None:
    try:
        parsed = json.loads(value or b"")
    except ValueError:
        return None
    event_id = parsed.get("event_id") if isinstance(parsed, dict) else None
    return event_id if isinstance(event_id, str) else None


def match(
    input_topic: str,
    inputs: Sequence[ConsumerRecord[bytes, bytes]],
    outputs: Sequence[ConsumerRecord[bytes, bytes]],
    dead_letter_topic: str,
) -> AuditReport:
    report = AuditReport(input_records=len(inputs), outcomes=len(outputs))
    by_position: dict[tuple[int, int], list[Outcome]] = defaultdict(list)
    by_event: dict[str, list[Outcome]] = defaultdict(list)
    for record in outputs:
        body = json.loads(record.value or b"{}")
        if record.topic == dead_letter_topic:
            report.dead_letters += 1
            source = body.get("source", {})
            if source.get("topic") == input_topic:
                position = (int(source["partition"]), int(source["offset"]))
                by_position[position].append(Outcome(record.topic, "dead_letter"))
        else:
            report.decisions += 1
            by_event[str(body["event_id"])].append(Outcome(record.topic, str(body["action"])))
    ids = Counter(_event_id(record.value) for record in inputs)
    for record in inputs:
        position = (record.partition, record.offset)
        event_id = _event_id(record.value)
        outcomes = list(by_position.get(position, ()))
        if event_id is not None and ids[event_id] == 1:
            outcomes += by_event.get(event_id, [])
        if not outcomes and event_id is not None and ids[event_id] > 1:
            # A reused event id: any decision for it counts for every record carrying it.
            outcomes = by_event.get(event_id, [])[:1]
        if not outcomes:
            report.missing.append(position)
            continue
        report.duplicates += len(outcomes) - 1
        if len(set(outcomes)) > 1 and event_id is not None:
            report.conflicting.append(event_id)
    return report


async def audit(
    bootstrap: str,
    input_topic: str,
    output_topics: Sequence[str],
    dead_letter_topic: str,
    timeout_s: float = 120.0,
) -> AuditReport:
    inputs = await read_to_end(bootstrap, [input_topic], timeout_s)
    outputs = await read_to_end(bootstrap, output_topics, timeout_s)
    return match(input_topic, inputs, outputs, dead_letter_topic)
