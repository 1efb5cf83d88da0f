"""Each consumer over the backlog, in a process of its own, watched from outside: the pipeline
in one mode (with the latency run for the first mode), the peer and naive consumers, and the
pass-through consumer that measures the broker alone."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Final

from bench.e2e.baselines import arguments
from bench.e2e.ceiling import cpu_per_event
from bench.e2e.child import ConsumerChild, scrape
from bench.e2e.config import LATENCY_LOAD_FRACTION, BenchConfig, stall_timeout_s
from bench.e2e.cpu import CpuMeter, Sampler, mb
from bench.e2e.images import BenchImage
from bench.e2e.modes import describe_mode
from bench.e2e.outcomes import latency_result, record_times, stream_result
from bench.e2e.publish import E2E_PREFIX, publish_paced, read_records, wait_for_commits
from bench.e2e.results import (
    BenchmarkStalled,
    BrokerAlone,
    ConsumerRun,
    LatencyResult,
    LoopLag,
    PhaseCpu,
    PublishResult,
    StreamResult,
)
from bench.local.process import free_port
from bench.local.triton import TritonServer
from consumer.runtime.kafka import build_producer
from consumer.runtime.settings import MetricsSettings, Settings

logger = logging.getLogger(__name__)

SAMPLE_INTERVAL_S: Final = 0.1
# How long the broker is watched doing nothing, to take its idle CPU out of its cost per event.
IDLE_PROBE_S: Final = 1.0
BATCH_METRICS: Final = ("modstream_batch_size_sum", "modstream_batch_size_count")
TRITON_METRICS: Final = ("nv_inference_count", "nv_inference_exec_count")
LOOP_LAG: Final = "modstream_event_loop_lag_seconds"
# The bound the loop-lag share is reported against: a wake-up this late has held up fetches,
# heartbeats and commits for longer than a batch takes to fill.
LATE_WAKEUP_LE: Final = "0.1"


@dataclass
class Bench:
    """What every consumer run shares: the workload, the servers, where CPU is read."""

    config: BenchConfig
    images: Sequence[BenchImage]
    triton: TritonServer
    meter: CpuMeter
    work: Path
    backlog: PublishResult
    phase_cpu: dict[str, PhaseCpu] = field(default_factory=dict)

    @property
    def stall_s(self) -> float:
        return stall_timeout_s(self.config)


@contextlib.asynccontextmanager
async def _watched(bench: Bench, child: ConsumerChild) -> AsyncIterator[Sampler]:
    """Start ``child`` and sample its CPU and memory until the block ends; then stop it."""
    await child.start()
    try:
        meter = bench.meter.with_group("consumer", child.pid)
        with Sampler(meter, SAMPLE_INTERVAL_S, rss_group="consumer") as sampler:
            yield sampler
    except BaseException:
        # An interrupted or failed run does not wait for the consumer to drain.
        child.kill_now()
        raise
    finally:
        await child.stop()


async def _triton_batches(bench: Bench) -> tuple[float, float]:
    """(images inferred, model executions) of the backbone in Triton so far."""
    totals = await scrape(
        bench.triton.metrics_url, TRITON_METRICS, {"model": bench.config.model_name}
    )
    return totals[TRITON_METRICS[0]], totals[TRITON_METRICS[1]]


def _mean(images: float, batches: float) -> float | None:
    return round(images / batches, 2) if batches > 0 else None


def loop_lag(total_s: float, wakeups: float, on_time: float) -> LoopLag:
    """Mean lag and share of late wake-ups from the histogram's _sum, _count and the
    cumulative bucket ``le=LATE_WAKEUP_LE`` (wake-ups at most that late)."""
    if wakeups <= 0:
        return LoopLag(wakeups=0, mean_ms=None, over_100ms_share=None)
    return LoopLag(
        wakeups=round(wakeups),
        mean_ms=round(total_s * 1000 / wakeups, 3),
        over_100ms_share=round(max(0.0, wakeups - on_time) / wakeups, 4),
    )


async def _scrape_loop_lag(metrics_url: str) -> LoopLag:
    """The pipeline's loop lag so far (the histogram counts from the consumer's start)."""
    totals = await scrape(metrics_url, (f"{LOOP_LAG}_sum", f"{LOOP_LAG}_count"), {})
    bucket = await scrape(metrics_url, (f"{LOOP_LAG}_bucket",), {"le": LATE_WAKEUP_LE})
    return loop_lag(
        totals[f"{LOOP_LAG}_sum"], totals[f"{LOOP_LAG}_count"], bucket[f"{LOOP_LAG}_bucket"]
    )


def _run(
    kind: str, name: str, settings: dict[str, object], stream: StreamResult, sampler: Sampler
) -> ConsumerRun:
    window = sampler.between(stream.first_decision_at, stream.last_decision_at)
    whole_started = stream.first_decision_at - stream.startup_s
    return ConsumerRun(
        name=name,
        kind=kind,
        settings=settings,
        stream=stream,
        cpu=cpu_per_event(window, stream.decisions - 1),
        whole_run=sampler.between(whole_started, whole_started + stream.all_committed_s),
        peak_rss_mb=mb(sampler.leader_peak_rss_kib()),
        peak_group_rss_mb=mb(sampler.peak_group_rss_kib()),
        triton_mean_batch=None,
    )


async def run_pipeline(
    bench: Bench, mode: str, settings: Settings, outcome_topics: Sequence[str], latency: bool
) -> tuple[ConsumerRun, LatencyResult | None]:
    """``modstream run`` over the backlog in ``mode``; then, if ``latency``, paced events.

    Every mode writes to the same outcome topics; each reads back only what was produced
    after it started.
    """
    port = free_port()
    kafka = settings.kafka.model_copy(update={"group_id": f"{settings.kafka.group_id}-{mode}"})
    settings = settings.model_copy(
        update={"kafka": kafka, "metrics": MetricsSettings(host="127.0.0.1", port=port)}
    )
    metrics_url = f"http://127.0.0.1:{port}/metrics"
    events, dead_letter = bench.config.events, settings.topics.dead_letter
    child = ConsumerChild.pipeline(
        f"the consumer ({mode})", settings, bench.work / f"consumer-{mode}.log"
    )
    triton_before = await _triton_batches(bench)
    paced: LatencyResult | None = None
    logger.info("end to end (%s mode): the consumer drains the backlog", mode)
    started = time.time()
    async with _watched(bench, child) as sampler:
        committed = await wait_for_commits(kafka, bench.backlog.ends, child, bench.stall_s)
        batches = await scrape(metrics_url, BATCH_METRICS, {})
        # Read at the end of the backlog, before the latency run adds its quieter wake-ups.
        lag = await _scrape_loop_lag(metrics_url)
        triton_after = await _triton_batches(bench)
        outcomes = await read_records(kafka, outcome_topics, events, timeout_s=60, since=started)
        stream = stream_result(
            outcomes, E2E_PREFIX, events, dead_letter, started, committed, _mean(*batches.values())
        )
        if latency:
            paced = await _latency(
                bench, settings, child, sampler, stream, outcome_topics, started, metrics_url
            )
    run = _run("pipeline", mode, describe_mode(settings), stream, sampler)
    triton_batch = _mean(triton_after[0] - triton_before[0], triton_after[1] - triton_before[1])
    return replace(run, triton_mean_batch=triton_batch, loop_lag=lag), paced


async def _latency(
    bench: Bench,
    settings: Settings,
    child: ConsumerChild,
    sampler: Sampler,
    backlog: StreamResult,
    outcome_topics: Sequence[str],
    since: float,
    metrics_url: str,
) -> LatencyResult:
    """Events published at a share of ``backlog``'s rate to the running consumer."""
    config, kafka = bench.config, settings.kafka
    before = await scrape(metrics_url, BATCH_METRICS, {})
    rate = backlog.decisions_per_s * LATENCY_LOAD_FRACTION
    logger.info("latency: %.1f events/s for %.0fs", rate, config.latency_seconds)
    producer = build_producer(kafka)
    await producer.start()
    try:
        began = time.time()
        paced = await publish_paced(
            producer,
            kafka.input_topic,
            bench.images,
            rate,
            config.latency_seconds,
            config.events,
            raw=config.raw,
        )
    finally:
        await producer.stop()
    backlog_ends = bench.backlog.ends
    ends = {
        p: max(backlog_ends.get(p, 0), paced.ends.get(p, 0)) for p in {*backlog_ends, *paced.ends}
    }
    await wait_for_commits(kafka, ends, child, bench.stall_s)
    bench.phase_cpu["latency"] = sampler.between(began, time.time())
    after = await scrape(metrics_url, BATCH_METRICS, {})
    mean_batch = _mean(*(after[k] - before[k] for k in BATCH_METRICS))
    expected = config.events + paced.events
    outcomes = await read_records(kafka, outcome_topics, expected, timeout_s=60, since=since)
    return latency_result(outcomes, paced, rate, mean_batch)


async def run_baseline(
    bench: Bench, kind: str, settings: Settings, topic: str, max_inflight: int | None = None
) -> ConsumerRun:
    """``python -m bench.e2e.baselines KIND`` over the backlog, in a group of its own."""
    kafka = settings.kafka.model_copy(update={"group_id": f"{settings.kafka.group_id}-{kind}"})
    settings = settings.model_copy(update={"kafka": kafka})
    argv = arguments(kind, topic, bench.backlog.ends, bench.stall_s, max_inflight=max_inflight)
    child = ConsumerChild.baseline(
        f"the {kind} consumer", settings, bench.work / f"{kind}.log", argv
    )
    triton_before = await _triton_batches(bench)
    started = time.time()
    async with _watched(bench, child) as sampler:
        await child.wait(bench.stall_s)
        committed = time.time()
    triton_after = await _triton_batches(bench)
    records = await read_records(kafka, [topic], bench.config.events, timeout_s=60)
    own_batch = 1.0 if kind == "naive" else None
    stream = stream_result(
        records,
        E2E_PREFIX,
        bench.config.events,
        settings.topics.dead_letter,
        started,
        committed,
        own_batch,
    )
    described: dict[str, object] = {"max_inflight_events": max_inflight} if max_inflight else {}
    run = _run(kind, kind, described, stream, sampler)
    bench.phase_cpu[kind] = run.whole_run
    triton_batch = _mean(triton_after[0] - triton_before[0], triton_after[1] - triton_before[1])
    return replace(run, triton_mean_batch=triton_batch)


async def run_broker_alone(
    bench: Bench, settings: Settings, topic: str, payload: bytes
) -> BrokerAlone:
    """The pass-through consumer over the backlog: the broker's CPU per event.

    The broker's CPU over the whole run, less what it uses idle, over the events: every fetch,
    produce and commit is in it (the group join too, a constant). The same figure between the
    first and the last record produced is reported beside it.
    """
    kafka = settings.kafka.model_copy(update={"group_id": f"{settings.kafka.group_id}-broker"})
    settings = settings.model_copy(update={"kafka": kafka})
    payload_path = bench.work / "decision.json"
    await asyncio.to_thread(payload_path.write_bytes, payload)
    argv = arguments("passthrough", topic, bench.backlog.ends, bench.stall_s, payload=payload_path)
    child = ConsumerChild.baseline(
        "the pass-through consumer", settings, bench.work / "passthrough.log", argv
    )
    logger.info("the broker alone: fetch, produce and commit only")
    idle_before = bench.meter.sample()
    await asyncio.sleep(IDLE_PROBE_S)
    idle_rate = (bench.meter.sample()["broker"] - idle_before["broker"]) / IDLE_PROBE_S
    async with _watched(bench, child) as sampler:
        await child.wait(bench.stall_s)
    whole = sampler.whole()
    bench.phase_cpu["passthrough"] = whole
    records = await read_records(kafka, [topic], bench.config.events, timeout_s=60)
    times = record_times(records, E2E_PREFIX)
    if len(times) < 2 or times[-1] <= times[0]:
        raise BenchmarkStalled(f"the pass-through consumer produced {len(times)} records")
    window = sampler.between(times[0], times[-1])
    after_first = len(times) - 1
    ingest = bench.phase_cpu.get("publish_backlog")
    return BrokerAlone(
        events=len(times),
        window_s=round(times[-1] - times[0], 3),
        events_per_s=round(after_first / (times[-1] - times[0]), 2),
        broker_cpu_ms_per_event=round(
            max(0.0, whole.cpu_s["broker"] - idle_rate * whole.wall_s) * 1000 / len(times), 3
        ),
        broker_cpu_ms_per_event_window=round(window.cpu_s["broker"] * 1000 / after_first, 3),
        client_cpu_ms_per_event=round(window.cpu_s["consumer"] * 1000 / after_first, 3),
        decision_bytes=len(payload),
        ingest_broker_cpu_ms_per_event=(
            round(ingest.cpu_s["broker"] * 1000 / bench.backlog.events, 3) if ingest else None
        ),
    )
