"""The run's results as ratios against the targets, a JSON report and a table for the terminal."""

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

from bench.e2e.config import BenchConfig
from bench.e2e.images import JPEG_QUALITY, NOISE_SIGMA, BenchImage
from bench.e2e.results import (
    BenchmarkStalled,
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


def _ratios(measurements: Measurements) -> dict[str, float]:
    e2e = measurements.end_to_end
    raw = measurements.raw_triton
    naive = measurements.naive
    if e2e is None or raw is None or naive is None:
        raise BenchmarkStalled("a measurement is missing; the run did not complete")
    return {
        "end_to_end_vs_raw_triton": _ratio(e2e.decisions_per_s, raw.images_per_s),
        "end_to_end_vs_naive": _ratio(e2e.decisions_per_s, naive.decisions_per_s),
    }


def _targets(ratios: Mapping[str, float]) -> dict[str, dict[str, object]]:
    wanted = {
        "end_to_end_vs_raw_triton": TARGET_VS_RAW_TRITON,
        "end_to_end_vs_naive": TARGET_VS_NAIVE,
    }
    return {
        name: {"target_at_least": target, "value": ratios[name], "met": ratios[name] >= target}
        for name, target in wanted.items()
    }


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
    ratios = _ratios(measurements)
    publish = measurements.publish
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
        "measurements": {
            "raw_triton": _as_json(measurements.raw_triton),
            "raw_triton_by_batch_size": [asdict(r) for r in measurements.raw_triton_by_batch_size],
            "publish_backlog": _as_json(publish),
            "end_to_end": _as_json(measurements.end_to_end),
            "latency": _as_json(measurements.latency),
            "naive": _as_json(measurements.naive),
        },
        "cpu_per_event_ms_single_thread": measurements.cpu_per_event_ms,
        "cpu_by_phase": {name: asdict(phase) for name, phase in measurements.phase_cpu.items()},
        "memory": measurements.resources,
        "ratios": ratios,
        "targets": _targets(ratios),
        "notes": [
            "Throughput is (decisions - 1) / (last decided_at - first decided_at), read back "
            "from the output topics: group joins and startup are excluded.",
            "The naive consumer calls the pipeline's own parse_event, decode_base64 and "
            "decode_image, so the comparison isolates batching and pipelining.",
            "Raw Triton repeats passes of `events` pre-decoded images until "
            "raw_triton_min_seconds have passed; raw_triton_by_batch_size does the same for "
            "smaller batches (a quarter of that time each) to show how Triton's cost per image "
            "depends on the batch size.",
            "Latency is Decision.timings.total_ms (created_at to decision) of events published "
            "at latency_load_fraction of the end-to-end throughput while the consumer ran.",
            "For the backlog runs, stage_means.queue_ms and total_ms mostly measure how long "
            "events waited in the backlog, not the pipeline's latency.",
            "The broker, tritonserver, the consumer and this harness share the machine's CPUs; "
            "cpu_by_phase shows each one's CPU seconds, other_processes the rest of the machine.",
        ],
    }


def _as_json(
    result: RawTritonResult | PublishResult | StreamResult | LatencyResult | None,
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


def format_table(
    config: BenchConfig, images: Sequence[BenchImage], m: Measurements, runtime_s: float
) -> str:
    """The human summary printed at the end of a run."""
    raw, e2e, naive, latency = m.raw_triton, m.end_to_end, m.naive, m.latency
    if raw is None or e2e is None or naive is None or latency is None:
        raise BenchmarkStalled("a measurement is missing; the run did not complete")
    ratios = _ratios(m)
    targets = _targets(ratios)
    consumer = m.settings.get("consumer", {})
    batching = consumer.get("batching", {}) if isinstance(consumer, dict) else {}
    imaging = consumer.get("imaging", {}) if isinstance(consumer, dict) else {}
    mean_mp = np.mean([i.width * i.height for i in images]) / 1e6
    mean_kb = np.mean([len(i.jpeg) for i in images]) / 1e3
    lines = [
        f"modstream bench: {config.events} events, {mean_mp:.1f} MP JPEGs ({mean_kb:.0f} kB), "
        f"batch {raw.batch_size} / wait {batching.get('max_wait_ms')} ms, "
        f"{raw.inflight_batches} in flight, {imaging.get('decode_workers')} decode workers, "
        f"{os.cpu_count()} CPUs",
        "",
        f"{'':24}{'throughput':>16}{'count':>8}{'seconds':>10}",
        f"{'raw Triton':24}{raw.images_per_s:>10.1f} img/s{raw.images:>8}{raw.seconds:>10.2f}",
        f"{'end to end':24}{e2e.decisions_per_s:>10.1f} dec/s{e2e.decisions:>8}"
        f"{e2e.first_to_last_decision_s:>10.2f}   all committed {e2e.all_committed_s:.1f}s "
        f"after start, mean batch {e2e.mean_batch_size}",
        f"{'naive consumer':24}{naive.decisions_per_s:>10.1f} dec/s{naive.decisions:>8}"
        f"{naive.first_to_last_decision_s:>10.2f}",
        "raw Triton by batch size: "
        + ", ".join(f"{r.batch_size}: {r.images_per_s:.0f}" for r in m.raw_triton_by_batch_size)
        + " img/s",
        "",
        f"latency at {latency.achieved_rate_per_s:.1f} events/s ({latency.decisions} events): "
        f"p50 {latency.p50_ms:.1f} ms, p99 {latency.p99_ms:.1f} ms, max {latency.max_ms:.1f} ms",
        "",
    ]
    for name, target in targets.items():
        verdict = "met" if target["met"] else "MISSED"
        lines.append(
            f"{name:28}{target['value']:>8.3f}   target >= {target['target_at_least']}: {verdict}"
        )
    if not all(t["met"] for t in targets.values()):
        lines.append(
            "note: targets are goals for the pipeline, not a pass/fail of this command; "
            "see cpu_by_phase in the JSON for where the time goes."
        )
    lines.append(f"runtime {runtime_s:.0f}s")
    return "\n".join(lines) + "\n"
