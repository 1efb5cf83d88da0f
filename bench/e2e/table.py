"""The human summary printed at the end of a run (the JSON report has everything)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from bench.e2e.ceiling import free_cores_limit, outside_decode_and_inference_ms, vs_limit
from bench.e2e.config import BenchConfig, event_format
from bench.e2e.images import BenchImage
from bench.e2e.modes import usable_cores
from bench.e2e.report import targets
from bench.e2e.results import BenchmarkStalled, Ceiling, ConsumerRun, Measurements


def _label(run: ConsumerRun) -> str:
    if run.kind == "pipeline":
        return f"end to end ({run.name})"
    return f"{run.name} consumer"


def _number(value: float | None, spec: str) -> str:
    return format(value, spec) if value is not None else "-"


def _consumer_lines(m: Measurements, ceiling: Ceiling | None) -> list[str]:
    lines = [
        f"{'':24}{'dec/s':>8}{'vs limit':>9}{'free':>6}{'batch':>7}"
        f"{'CPU ms per decided event: consumer':>36}{'triton':>8}{'broker':>8}{'total':>8}"
        f"{'outside':>9}{'RSS MB':>8}{'lag ms':>8}{'>100ms':>8}",
    ]
    for run in m.consumers.values():
        cpu = run.cpu.by_process_ms
        ratio = vs_limit(run, ceiling) if ceiling is not None else None
        free = free_cores_limit(run, ceiling) if ceiling is not None else None
        on_free = run.stream.decisions_per_s / free if free else None
        outside = outside_decode_and_inference_ms(run.cpu, ceiling) if ceiling else None
        batch = run.stream.mean_batch_size or run.triton_mean_batch
        lag = run.loop_lag
        late = lag.over_100ms_share * 100 if lag and lag.over_100ms_share is not None else None
        lines.append(
            f"{_label(run):24}{run.stream.decisions_per_s:>8.1f}{_number(ratio, '.2f'):>9}"
            f"{_number(on_free, '.2f'):>6}"
            f"{_number(batch, '.1f'):>7}{_number(cpu.get('consumer'), '.1f'):>36}"
            f"{_number(cpu.get('triton'), '.1f'):>8}{_number(cpu.get('broker'), '.1f'):>8}"
            f"{run.cpu.total_ms:>8.1f}{_number(outside, '.1f'):>9}"
            f"{_number(run.peak_group_rss_mb, '.0f'):>8}"
            f"{_number(lag.mean_ms if lag else None, '.1f'):>8}{_number(late, '.1f') + '%':>8}"
        )
    lines.append(
        "  free: vs the limit on the cores not busy with other work in the run's window; batch: "
        "the consumer's own mean batch (Triton's images per execution for the peer); outside: "
        "total minus decode and inference alone; lag ms, >100ms: the pipeline's event-loop lag "
        "over the backlog (mean, share of wake-ups over 100 ms late)"
    )
    return lines


def _ceiling_lines(ceiling: Ceiling | None, m: Measurements) -> list[str]:
    if ceiling is None:
        return ["machine limit: not measured (no per-process CPU on this platform)"]
    broker = m.broker_alone
    ingest = broker.ingest_broker_cpu_ms_per_event if broker is not None else None
    return [
        f"stages alone, CPU ms per event: parse {ceiling.parse_ms:.2f}, base64 "
        f"{ceiling.base64_ms:.2f}, decode {ceiling.decode_ms:.2f}, inference "
        f"{ceiling.inference_ms:.2f} (Triton at batch {ceiling.inference_batch_size}), broker "
        f"{ceiling.broker_ms:.2f} (publishing: {_number(ingest, '.2f')} more)",
        f"machine limit: {ceiling.cores} cores / {ceiling.per_event_ms:.1f} ms = "
        f"{ceiling.decisions_per_s:.1f} decisions/s",
    ]


def format_table(
    config: BenchConfig, images: Sequence[BenchImage], m: Measurements, runtime_s: float
) -> str:
    """The human summary printed at the end of a run."""
    raw, naive, latency = m.raw_triton, m.naive, m.latency
    if raw is None or naive is None or latency is None:
        raise BenchmarkStalled("a measurement is missing; the run did not complete")
    consumer = m.settings.get("consumer", {})
    batching = consumer.get("batching", {}) if isinstance(consumer, dict) else {}
    mean_mp = np.mean([i.width * i.height for i in images]) / 1e6
    mean_kb = np.mean([len(i.jpeg) for i in images]) / 1e3
    by_batch = ", ".join(
        f"{r.batch_size}: {r.images_per_s:.0f} img/s {_number(r.triton_cpu_ms_per_image, '.1f')} ms"
        for r in m.raw_triton_by_batch_size
    )
    lines = [
        f"modstream bench: {config.events} events, {mean_mp:.1f} MP JPEGs ({mean_kb:.0f} kB), "
        f"batch {raw.batch_size} / wait {batching.get('max_wait_ms')} ms, "
        f"{raw.inflight_batches} in flight, {event_format(config)} events, "
        f"modes {', '.join(m.modes)}, "
        f"{usable_cores()} usable CPUs",
        "",
        f"raw Triton {raw.images_per_s:.1f} img/s; by batch size (img/s, Triton CPU per image): "
        f"{by_batch}",
        *_ceiling_lines(m.ceiling, m),
        "",
        *_consumer_lines(m, m.ceiling),
        "",
        f"latency at {latency.achieved_rate_per_s:.1f} events/s ({latency.decisions} events, "
        f"{m.modes[0]}): p50 {latency.p50_ms:.1f} ms, p99 {latency.p99_ms:.1f} ms, max "
        f"{latency.max_ms:.1f} ms",
        "",
    ]
    found = targets(m)
    for name, target in found.items():
        verdict = "met" if target["met"] else "MISSED"
        bound = (
            f">= {target['target_at_least']}"
            if "target_at_least" in target
            else f"<= {target['target_at_most']}"
        )
        value = target["value"]
        shown = f"{value:>8.3f}" if isinstance(value, float | int) else f"{value!s:>8}"
        lines.append(f"{name:34}{shown}   target {bound}: {verdict}")
    if not all(t["met"] for t in found.values()):
        lines.append(
            "note: targets are goals for the pipeline, not a pass/fail of this command; "
            "see consumers and cpu_by_phase in the JSON for where the time goes."
        )
    lines.append(f"runtime {runtime_s:.0f}s")
    return "\n".join(lines) + "\n"
