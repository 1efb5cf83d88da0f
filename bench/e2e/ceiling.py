"""The machine limit and where each consumer's CPU goes against it.

The limit is what the machine could decide per second if it did nothing but the necessary
work: usable cores / (parse + base64 + decode per event + Triton's CPU per image at its
cheapest batch size + the broker's CPU per event). A consumer's CPU per decided event is read
by process between its first and last decision; what it spends beyond decoding and inference
alone is its overhead (and the broker's), which the targets bound.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict
from typing import Final

from bench.e2e.cpu import HARNESS, OTHER
from bench.e2e.modes import CONSUMER_DECODE_MODES
from bench.e2e.results import (
    BrokerAlone,
    Ceiling,
    ConsumerRun,
    CpuPerEvent,
    PhaseCpu,
    RawTritonResult,
)

# Targets for the consumer-decode modes on 6 MP JPEGs; reported as met or missed, never enforced.
TARGET_VS_MACHINE_LIMIT: Final = 0.9
TARGET_OUTSIDE_DECODE_AND_INFERENCE_MS: Final = 5.0

# The processes whose CPU deciding an event needs; the harness and the rest of the machine are
# reported beside them, not added.
DECIDING: Final = ("consumer", "triton", "broker")

METHOD: Final = {
    "parse_ms, base64_ms, decode_ms": "thread CPU time (time.thread_time) of parse_record, "
    "decode_base64 and decode_image on the run's own events, one thread, nothing else running",
    "inference_ms": "tritonserver's CPU (process group, backend stubs included, /proc) per "
    "image over timed passes of pre-decoded batches, at the batch size where it is lowest",
    "broker_ms": "the broker's CPU (/proc) over the whole run of a pass-through consumer "
    "(fetch, produce a decision-sized record, commit; no decode, no inference) over the same "
    "backlog, less the broker's idle CPU over as long, per event",
    "cpu_per_event_ms": "CPU seconds of each process group between a run's first and last "
    "decision (sampled every ~0.1 s, interpolated), divided by the decisions after the first",
    "outside_decode_and_inference_ms": "total (consumer + triton + broker) per decided event "
    "minus decode_ms minus inference_ms",
    "machine_limit_on_free_cores": "the machine limit on the cores left after what the harness "
    "and other processes kept busy during the run's window (context on a shared machine; the "
    "targets use the plain limit)",
}


RAW_STAGES_METHOD: Final = (
    "thread CPU time (time.thread_time) of parse_record and decode_image on raw-image records "
    "as the run publishes them (the JPEG as the value, the event fields as headers), one "
    "thread, nothing else running; parse reads the headers only, and base64_ms is 0: a raw "
    "record carries the image bytes, there is no base64 to decode"
)


def method(raw: bool) -> dict[str, str]:
    """How each figure of the limit is measured, for events in the run's format."""
    if not raw:
        return dict(METHOD)
    return {**METHOD, "parse_ms, base64_ms, decode_ms": RAW_STAGES_METHOD}


def _ms(value: float) -> float:
    return round(value, 3)


def build_ceiling(
    cores: int, costs: Mapping[str, float], inference: RawTritonResult, broker: BrokerAlone
) -> Ceiling | None:
    """The machine limit from the stages measured alone; None when a stage has no CPU figure."""
    if inference.triton_cpu_ms_per_image is None:
        return None
    parse = costs["parse_event_cpu_ms"]
    base64 = costs["decode_base64_cpu_ms"]
    decode = costs["decode_image_cpu_ms"]
    per_event = parse + base64 + decode + inference.triton_cpu_ms_per_image
    per_event += broker.broker_cpu_ms_per_event
    return Ceiling(
        cores=cores,
        parse_ms=_ms(parse),
        base64_ms=_ms(base64),
        decode_ms=_ms(decode),
        inference_ms=_ms(inference.triton_cpu_ms_per_image),
        inference_batch_size=inference.batch_size,
        broker_ms=_ms(broker.broker_cpu_ms_per_event),
        per_event_ms=_ms(per_event),
        decisions_per_s=round(cores * 1000 / per_event, 2) if per_event > 0 else 0.0,
    )


def cpu_per_event(window: PhaseCpu, events: int) -> CpuPerEvent:
    """``window``'s CPU by process, per event; ``consumer + triton + broker`` as the total."""
    per = {k: _ms(v * 1000 / events) if events > 0 else 0.0 for k, v in window.cpu_s.items()}
    names: tuple[str, ...] = (*DECIDING, HARNESS, OTHER)
    by_process = {name: per[name] for name in names if name in per}
    return CpuPerEvent(
        window_s=window.wall_s,
        events=events,
        by_process_ms=by_process,
        total_ms=_ms(sum(per.get(name, 0.0) for name in DECIDING)),
        cores_busy=window.cores_busy,
    )


def outside_decode_and_inference_ms(cpu: CpuPerEvent, ceiling: Ceiling) -> float:
    """What deciding an event costs beyond decoding it and inferring on it alone."""
    return _ms(cpu.total_ms - ceiling.decode_ms - ceiling.inference_ms)


def run_targets(run: ConsumerRun, ceiling: Ceiling | None) -> dict[str, dict[str, object]]:
    """The consumer-decode modes' targets, as measured; empty for other runs."""
    if ceiling is None or run.kind != "pipeline" or run.name not in CONSUMER_DECODE_MODES:
        return {}
    ratio = vs_limit(run, ceiling)
    outside = outside_decode_and_inference_ms(run.cpu, ceiling)
    return {
        "end_to_end_vs_machine_limit": {
            "target_at_least": TARGET_VS_MACHINE_LIMIT,
            "value": ratio,
            "met": ratio >= TARGET_VS_MACHINE_LIMIT,
        },
        "outside_decode_and_inference_ms": {
            "target_at_most": TARGET_OUTSIDE_DECODE_AND_INFERENCE_MS,
            "value": outside,
            "met": outside <= TARGET_OUTSIDE_DECODE_AND_INFERENCE_MS,
        },
    }


def vs_limit(run: ConsumerRun, ceiling: Ceiling) -> float:
    limit = ceiling.decisions_per_s
    return round(run.stream.decisions_per_s / limit, 3) if limit > 0 else 0.0


def free_cores_limit(run: ConsumerRun, ceiling: Ceiling) -> float:
    """The machine limit on the cores the run had: less what the harness and the rest of the
    machine (other work on a shared machine) kept busy during its window."""
    taken = run.cpu.cores_busy.get(OTHER, 0.0) + run.cpu.cores_busy.get(HARNESS, 0.0)
    free = max(ceiling.cores - taken, 0.0)
    return round(free * 1000 / ceiling.per_event_ms, 2) if ceiling.per_event_ms > 0 else 0.0


def summarize_run(run: ConsumerRun, ceiling: Ceiling | None) -> dict[str, object]:
    """One consumer's line of the report: throughput, CPU per event by process, memory."""
    summary: dict[str, object] = {
        "kind": run.kind,
        "settings": run.settings,
        "decisions_per_s": run.stream.decisions_per_s,
        "decisions": run.stream.decisions,
        "dead_letters": run.stream.dead_letters,
        "duplicates": run.stream.duplicates,
        "first_to_last_decision_s": run.stream.first_to_last_decision_s,
        "startup_s": run.stream.startup_s,
        "all_committed_s": run.stream.all_committed_s,
        "mean_batch_size": run.stream.mean_batch_size,
        "stage_means_ms": asdict(run.stream.stage_means),
        "triton_mean_batch": run.triton_mean_batch,
        "cpu_per_event_ms": {**run.cpu.by_process_ms, "total": run.cpu.total_ms},
        "cores_busy": run.cpu.cores_busy,
        "window": {"seconds": run.cpu.window_s, "events": run.cpu.events},
        "whole_run_cpu": {"wall_s": run.whole_run.wall_s, "cpu_s": run.whole_run.cpu_s},
        "peak_rss_mb": run.peak_rss_mb,
        "peak_group_rss_mb": run.peak_group_rss_mb,
        "loop_lag": asdict(run.loop_lag) if run.loop_lag is not None else None,
    }
    if ceiling is not None:
        summary["vs_machine_limit"] = vs_limit(run, ceiling)
        free = free_cores_limit(run, ceiling)
        summary["machine_limit_on_free_cores"] = free
        summary["vs_machine_limit_on_free_cores"] = (
            round(run.stream.decisions_per_s / free, 3) if free > 0 else None
        )
        summary["outside_decode_and_inference_ms"] = outside_decode_and_inference_ms(
            run.cpu, ceiling
        )
        summary["triton_over_inference_alone_ms"] = _ms(
            run.cpu.by_process_ms.get("triton", 0.0) - ceiling.inference_ms
        )
    summary["targets"] = run_targets(run, ceiling)
    return summary
