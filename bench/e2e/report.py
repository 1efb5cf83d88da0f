"""The run's results as ratios against the targets and a JSON report."""

from __future__ import annotations

import contextlib
import json
import os
import platform
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

import numpy as np

from bench.e2e.ceiling import method, run_targets, summarize_run
from bench.e2e.config import BenchConfig
from bench.e2e.images import JPEG_QUALITY, NOISE_SIGMA, BenchImage
from bench.e2e.modes import CONSUMER_DECODE_MODES
from bench.e2e.results import (
    BenchmarkStalled,
    BrokerAlone,
    LatencyResult,
    Measurements,
    PublishResult,
    RawTritonResult,
    StreamResult,
)

# Targets for the pipeline; a run reports whether they are met and exits 0 either way.
TARGET_VS_RAW_TRITON: Final = 0.9
TARGET_VS_NAIVE: Final = 5.0


def _ratio(numerator: float, denominator: float) -> float:
    return round(numerator / denominator, 3) if denominator > 0 else 0.0


def ratios(measurements: Measurements) -> dict[str, float]:
    """The first mode's throughput against raw Triton, the naive and peer consumers, and the
    machine limit (when it could be measured)."""
    e2e = measurements.end_to_end
    raw = measurements.raw_triton
    naive = measurements.naive
    if e2e is None or raw is None or naive is None:
        raise BenchmarkStalled("a measurement is missing; the run did not complete")
    values = {
        "end_to_end_vs_raw_triton": _ratio(e2e.decisions_per_s, raw.images_per_s),
        "end_to_end_vs_naive": _ratio(e2e.decisions_per_s, naive.decisions_per_s),
    }
    peer = measurements.consumers.get("peer")
    if peer is not None:
        values["end_to_end_vs_peer"] = _ratio(e2e.decisions_per_s, peer.stream.decisions_per_s)
    ceiling = measurements.ceiling
    if ceiling is not None:
        values["end_to_end_vs_machine_limit"] = _ratio(e2e.decisions_per_s, ceiling.decisions_per_s)
    return values


def targets(measurements: Measurements) -> dict[str, dict[str, object]]:
    """Every target with its measured value and whether it is met.

    The ratios to raw Triton and to the naive consumer are the first mode's; the machine-limit
    and overhead targets are the first consumer-decode mode's (each mode's own are in
    ``consumers``).
    """
    values = ratios(measurements)
    wanted = {
        "end_to_end_vs_raw_triton": TARGET_VS_RAW_TRITON,
        "end_to_end_vs_naive": TARGET_VS_NAIVE,
    }
    found: dict[str, dict[str, object]] = {
        name: {"target_at_least": target, "value": values[name], "met": values[name] >= target}
        for name, target in wanted.items()
    }
    decoding = [m for m in measurements.modes if m in CONSUMER_DECODE_MODES]
    if decoding and decoding[0] in measurements.consumers:
        run = measurements.consumers[decoding[0]]
        for name, target in run_targets(run, measurements.ceiling).items():
            found[name] = {**target, "mode": run.name}
    return found


def machine_info() -> dict[str, object]:
    """The machine the run shared with the broker and Triton: CPUs, memory, platform."""
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count() or 0
    memory_mb: float | None = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory_mb = round(int(line.split()[1]) / 1024, 1)
    return {
        "cpu_count": os.cpu_count(),
        "usable_cpus": usable,
        "memory_mb": memory_mb,
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": platform.processor() or None,
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
    }


def build_report(
    config: BenchConfig,
    images: Sequence[BenchImage],
    measurements: Measurements,
    started_at: datetime,
    runtime_s: float,
) -> dict[str, object]:
    """Everything a run measured, as a JSON-ready dict."""
    publish = measurements.publish
    ceiling = measurements.ceiling
    jpeg_sizes = [len(image.jpeg) for image in images]
    return {
        "started_at": started_at.isoformat(timespec="seconds"),
        "runtime_s": round(runtime_s, 1),
        "settings": measurements.settings,
        "machine": machine_info(),
        "images": {
            "source_photos": [image.name for image in images],
            "dimensions": [[image.width, image.height] for image in images],
            "megapixels": [round(image.width * image.height / 1e6, 2) for image in images],
            "jpeg_quality": JPEG_QUALITY,
            "noise_sigma": NOISE_SIGMA,
            "jpeg_bytes": jpeg_sizes,
            "jpeg_bytes_mean": round(float(np.mean(jpeg_sizes))),
            "event_bytes_mean": round(publish.bytes / publish.events) if publish else None,
        },
        "modes": measurements.modes,
        "measurements": {
            "raw_triton": _as_json(measurements.raw_triton),
            "raw_triton_by_batch_size": [asdict(r) for r in measurements.raw_triton_by_batch_size],
            "publish_backlog": _as_json(publish),
            "end_to_end": _as_json(measurements.end_to_end),
            "latency": _as_json(measurements.latency),
            "naive": _as_json(measurements.naive),
            "broker_alone": _as_json(measurements.broker_alone),
        },
        "cpu_per_event_ms_single_thread": measurements.cpu_per_event_ms,
        "ceiling": (
            {**asdict(ceiling), "method": method(config.raw)} if ceiling is not None else None
        ),
        "consumers": {
            name: summarize_run(run, ceiling) for name, run in measurements.consumers.items()
        },
        "cpu_by_phase": {name: asdict(phase) for name, phase in measurements.phase_cpu.items()},
        "memory": {
            **measurements.resources,
            # The consumer process's own peak; with worker processes, their sum is in
            # consumers.<name>.peak_group_rss_mb.
            "consumer_peak_rss_mb": {
                name: run.peak_rss_mb for name, run in measurements.consumers.items()
            },
        },
        "ratios": ratios(measurements),
        "targets": targets(measurements),
        "notes": NOTES,
    }


NOTES: Final = [
    "Throughput is (decisions - 1) / (last decided_at - first decided_at), read back from the "
    "output topics: group joins and startup are excluded.",
    "Every consumer runs in a process (group) of its own, configured by MODSTREAM_* variables: "
    "the pipeline as `modstream run` in each mode, the peer and naive consumers and the "
    "pass-through consumer as `python -m bench.e2e.baselines`. The harness only publishes, "
    "polls the group's commits every 0.25 s and samples /proc.",
    "consumers.*.cpu_per_event_ms is each process group's CPU between the run's first and last "
    "decision over the decisions after the first, the same window as its throughput; total is "
    "consumer + triton + broker. whole_run_cpu covers startup to the last commit.",
    "ceiling.decisions_per_s (the machine limit) = cores / (parse + base64 + decode per event + "
    "Triton's CPU per image at its cheapest batch size + the broker's CPU per event), each "
    "measured alone in this run; ceiling.method says how.",
    "The broker's cost in the limit is for fetching, producing and committing a backlog that "
    "is already in the broker, as in the end-to-end runs; what publishing it cost the broker "
    "is measurements.broker_alone.ingest_broker_cpu_ms_per_event.",
    "The peer consumer sends every image as its own Triton request (up to max_batch_size x "
    "max_inflight_batches events in flight) and leaves batching to Triton's dynamic batcher; "
    "triton_mean_batch is images per model execution in Triton during each run.",
    "The naive and peer consumers call the pipeline's own parse_record, decode_base64 (JSON "
    "events only) and decode_image, so the comparison isolates batching and pipelining.",
    "settings.event_format is how the events were published: json (an ImageEvent with the "
    "image inline as base64) or raw (the JPEG as the record value, the event fields as "
    "headers; its stages alone have no base64 step, reported as 0).",
    "consumers.*.loop_lag is the pipeline's modstream_event_loop_lag_seconds (how late its "
    "event loop wakes from a 0.25 s sleep) scraped when the backlog was committed, counting "
    "from the consumer's start: mean_ms = _sum / _count, over_100ms_share = 1 - "
    "bucket{le=0.1} / _count. The baselines have no such metric (null).",
    "Raw Triton repeats passes of `events` pre-decoded images until raw_triton_min_seconds "
    "have passed; smaller batch sizes get a quarter of that time each.",
    "Latency is Decision.timings.total_ms (created_at to decision) of events published at "
    "latency_load_fraction of the first mode's throughput while that consumer ran.",
    "For the backlog runs, stage_means.queue_ms and total_ms mostly measure how long events "
    "waited in the backlog, not the pipeline's latency.",
    "The broker, tritonserver, the consumer and this harness share the machine's CPUs; "
    "other_processes is the rest of the machine's busy time in the same intervals (time a "
    "hypervisor stole included).",
    "The stages alone are measured on an otherwise quiet machine; with every core busy the "
    "same work can cost more CPU (shared caches and memory bandwidth), which the end-to-end "
    "figures include and the limit does not.",
]


def _as_json(
    result: RawTritonResult | PublishResult | StreamResult | LatencyResult | BrokerAlone | None,
) -> dict[str, object] | None:
    return asdict(result) if result is not None else None


def write_report(report: Mapping[str, object], out_dir: Path) -> Path:
    """Write ``bench-<UTC timestamp>.json`` and ``latest.json``; return the first path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    text = json.dumps(report, indent=2, sort_keys=False) + "\n"
    path = out_dir / f"bench-{stamp}.json"
    path.write_text(text)
    (out_dir / "latest.json").write_text(text)
    return path
