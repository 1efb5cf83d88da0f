"""Decisions read back from the output topics, turned into throughput and latency results."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

from bench.e2e.publish import LATENCY_PREFIX, Record
from bench.e2e.results import (
    BenchmarkStalled,
    LatencyResult,
    PublishResult,
    StageMeans,
    StreamResult,
)
from consumer.contract.events import Decision


def _decisions(
    records: Sequence[Record], prefix: str, dead_letter_topic: str
) -> tuple[list[Decision], int]:
    mine = [r for r in records if (r.key or b"").startswith(prefix.encode())]
    decisions = [
        Decision.model_validate_json(r.value or b"") for r in mine if r.topic != dead_letter_topic
    ]
    return decisions, len([r for r in mine if r.topic == dead_letter_topic])


def _stage_means(decisions: Sequence[Decision]) -> StageMeans:
    def mean(values: Iterator[float]) -> float:
        return round(float(np.mean(list(values))), 3)

    return StageMeans(
        queue_ms=mean(d.timings.queue_ms for d in decisions),
        decode_ms=mean(d.timings.decode_ms for d in decisions),
        batch_wait_ms=mean(d.timings.batch_wait_ms for d in decisions),
        inference_ms=mean(d.timings.inference_ms for d in decisions),
        total_ms=mean(d.timings.total_ms for d in decisions),
    )


def stream_result(
    records: Sequence[Record],
    prefix: str,
    events: int,
    dead_letter_topic: str,
    started_wall: float,
    committed_wall: float,
    mean_batch_size: float | None,
) -> StreamResult:
    """Throughput from the decisions' own timestamps: (count - 1) / (last - first).

    Raises BenchmarkStalled when fewer than two decisions came back.
    """
    decisions, dead_letters = _decisions(records, prefix, dead_letter_topic)
    unique = {d.event_id: d for d in decisions}
    times = sorted(d.decided_at.timestamp() for d in unique.values())
    if len(times) < 2 or times[-1] <= times[0]:
        raise BenchmarkStalled(f"only {len(times)} decisions came back for {events} events")
    span = times[-1] - times[0]
    return StreamResult(
        events=events,
        decisions=len(unique),
        dead_letters=dead_letters,
        duplicates=len(decisions) - len(unique),
        first_to_last_decision_s=round(span, 4),
        decisions_per_s=round((len(times) - 1) / span, 2),
        startup_s=round(times[0] - started_wall, 3),
        all_committed_s=round(committed_wall - started_wall, 3),
        stage_means=_stage_means(list(unique.values())),
        mean_batch_size=mean_batch_size,
        first_decision_at=times[0],
        last_decision_at=times[-1],
    )


def record_times(records: Sequence[Record], prefix: str) -> list[float]:
    """Unix times at which the records keyed ``prefix...`` were produced, in order."""
    mine = [r for r in records if (r.key or b"").startswith(prefix.encode())]
    return sorted(r.timestamp / 1000 for r in mine)


def latency_result(
    records: Sequence[Record],
    paced: PublishResult,
    target_rate: float,
    mean_batch_size: float | None,
) -> LatencyResult:
    """Percentiles of ``Decision.timings.total_ms`` over the paced events.

    Raises BenchmarkStalled when none of them came back.
    """
    decisions, _ = _decisions(records, LATENCY_PREFIX, "")
    unique = list({d.event_id: d for d in decisions}.values())
    if not unique:
        raise BenchmarkStalled("no decision came back for the latency phase")
    totals = np.array([d.timings.total_ms for d in unique])
    return LatencyResult(
        target_rate_per_s=round(max(target_rate, 1.0), 2),
        achieved_rate_per_s=round((paced.events - 1) / paced.seconds, 2)
        if paced.seconds > 0
        else 0.0,
        events=paced.events,
        decisions=len(unique),
        p50_ms=round(float(np.percentile(totals, 50)), 2),
        p99_ms=round(float(np.percentile(totals, 99)), 2),
        mean_ms=round(float(totals.mean()), 2),
        max_ms=round(float(totals.max()), 2),
        stage_means=_stage_means(unique),
        mean_batch_size=mean_batch_size,
    )
