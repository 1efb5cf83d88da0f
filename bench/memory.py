"""The consumer's memory model, and the measurement its factors come from (docs/memory.md).

A consumer's resident memory is bounded by three terms, each set by settings:

    base                                  interpreter, libraries, clients (measured idle)
  + in-flight factor x (MAX_INFLIGHT_BYTES + 2 x FETCH_MAX_BYTES)
                                          records held between the fetch and their outcome: the
                                          bound is checked before each fetch, so one fetch
                                          response can be admitted past it, and the Kafka
                                          client may hold the next one
  + DECODE_WORKERS x MAX_DECODE_BYTES     each decode needs at most its estimate
                                          (consumer.imaging.decode.decode_memory_bytes)

``python -m bench.memory`` measures the base and the in-flight factor with real ``modstream
run`` processes against the local broker and tritonserver, and checks the bound on a corpus
of maximal events; the results go to bench/results/memory.json. ``MODEL`` holds the numbers
measured; tests/integration/test_memory.py re-checks the bound on every run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import tempfile
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from bench.audit import read_to_end
from bench.clone import clone_root
from bench.local.process import proc_status_kib
from bench.local.tansu import TansuBroker, ensure_topics
from bench.local.triton import TritonServer
from bench.memory_corpora import flat_image, inline_event, noise_jpeg
from bench.memory_model import ALLOCATOR_ENV, MODEL, memory_bound, memory_terms
from consumer.runtime.settings import MiB, Settings

PARTITIONS = 4


# --- running a consumer on a corpus --------------------------------------------------------


@dataclass(frozen=True)
class RunResult:
    events: int
    record_bytes: int
    seconds: float
    peak_rss_bytes: int
    outcomes: int
    dead_letters: int


def consumer_env(
    bootstrap: str, triton_url: str, run: str, overrides: Mapping[str, str]
) -> dict[str, str]:
    """The environment of a ``modstream run`` reading ``images-<run>``."""
    return {
        **os.environ,
        "MODSTREAM_KAFKA__BOOTSTRAP_SERVERS": bootstrap,
        "MODSTREAM_KAFKA__GROUP_ID": f"memory-{run}",
        "MODSTREAM_KAFKA__INPUT_TOPIC": f"images-{run}",
        "MODSTREAM_KAFKA__SESSION_TIMEOUT_MS": "2000",
        "MODSTREAM_KAFKA__HEARTBEAT_INTERVAL_MS": "500",
        "MODSTREAM_KAFKA__COMMIT_INTERVAL_MS": "100",
        "MODSTREAM_TOPICS__ALLOW": f"allow-{run}",
        "MODSTREAM_TOPICS__REVIEW": f"review-{run}",
        "MODSTREAM_TOPICS__BLOCK": f"block-{run}",
        "MODSTREAM_TOPICS__DEAD_LETTER": f"dlq-{run}",
        "MODSTREAM_TRITON__URL": triton_url,
        "MODSTREAM_POLICY__PATH": str(clone_root() / "policies" / "default.yaml"),
        "MODSTREAM_METRICS__HOST": "127.0.0.1",
        "MODSTREAM_METRICS__PORT": "0",
        **ALLOCATOR_ENV,
        **overrides,
    }


async def run_corpus(
    bootstrap: str,
    triton_url: str,
    events: Sequence[bytes],
    work: Path,
    overrides: Mapping[str, str] | None = None,
    timeout_s: float = 600.0,
) -> RunResult:
    """Produce ``events``, then run one consumer over them at full speed; measure its peak RSS.

    Raises TimeoutError when the consumer has not committed every event within ``timeout_s``.
    """
    run = uuid.uuid4().hex[:8]
    env = consumer_env(bootstrap, triton_url, run, overrides or {})
    outputs = [env[f"MODSTREAM_TOPICS__{name}"] for name in ("ALLOW", "REVIEW", "BLOCK")]
    dead_letter = env["MODSTREAM_TOPICS__DEAD_LETTER"]
    input_topic = env["MODSTREAM_KAFKA__INPUT_TOPIC"]
    await ensure_topics(
        bootstrap, {input_topic: PARTITIONS, **{t: 1 for t in [*outputs, dead_letter]}}
    )
    ends = await _produce(bootstrap, input_topic, events)
    log_path = work / f"consumer-{run}.log"
    started = time.monotonic()
    process = await _start_consumer(env, log_path)
    try:
        await _wait_committed(
            bootstrap,
            env["MODSTREAM_KAFKA__GROUP_ID"],
            input_topic,
            ends,
            process,
            timeout_s,
            log_path,
        )
        seconds = time.monotonic() - started
        peak_kib = proc_status_kib(process.pid, "VmHWM")
    finally:
        await _terminate(process)
    if peak_kib is None:
        raise RuntimeError(f"no VmHWM for the consumer (pid {process.pid})")
    decided = await read_to_end(bootstrap, outputs)
    dead = await read_to_end(bootstrap, [dead_letter])
    return RunResult(
        events=len(events),
        record_bytes=sum(len(e) for e in events),
        seconds=seconds,
        peak_rss_bytes=peak_kib * 1024,
        outcomes=len(decided) + len(dead),
        dead_letters=len(dead),
    )


async def _start_consumer(env: dict[str, str], log_path: Path) -> asyncio.subprocess.Process:
    """``modstream run`` from the clone with ``env``, its output appended to ``log_path``."""
    with log_path.open("ab") as log:
        return await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "consumer",
            "run",
            env=env,
            stdout=log,
            stderr=log,
            cwd=clone_root(),
        )


async def idle_rss(bootstrap: str, triton_url: str, work: Path, settle_s: float = 3.0) -> int:
    """Resident memory of a consumer that has started and has nothing to do."""
    run = uuid.uuid4().hex[:8]
    env = consumer_env(bootstrap, triton_url, run, {})
    await ensure_topics(bootstrap, {env["MODSTREAM_KAFKA__INPUT_TOPIC"]: PARTITIONS})
    log_path = work / f"consumer-idle-{run}.log"
    process = await _start_consumer(env, log_path)
    try:
        deadline = time.monotonic() + 120
        while b"serving model" not in log_path.read_bytes():
            if process.returncode is not None or time.monotonic() > deadline:
                raise RuntimeError(f"consumer did not start: {log_path}")
            await asyncio.sleep(0.1)
        await asyncio.sleep(settle_s)
        peak_kib = proc_status_kib(process.pid, "VmHWM")
    finally:
        await _terminate(process)
    if peak_kib is None:
        raise RuntimeError("no VmHWM for the idle consumer")
    return peak_kib * 1024


async def _produce(bootstrap: str, topic: str, events: Iterable[bytes]) -> dict[int, int]:
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", max_request_size=64 * MiB, linger_ms=5
    )
    await producer.start()
    ends: dict[int, int] = {}
    try:
        for index, value in enumerate(events):
            meta = await producer.send_and_wait(topic, value, partition=index % PARTITIONS)
            ends[meta.partition] = max(ends.get(meta.partition, 0), meta.offset + 1)
    finally:
        await producer.stop()
    return ends


async def _wait_committed(
    bootstrap: str,
    group: str,
    topic: str,
    ends: Mapping[int, int],
    process: asyncio.subprocess.Process,
    timeout_s: float,
    log_path: Path,
) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        deadline = time.monotonic() + timeout_s
        partitions = [TopicPartition(topic, p) for p in ends]
        while time.monotonic() < deadline:
            if process.returncode is not None:
                raise RuntimeError(f"the consumer exited with {process.returncode}: {log_path}")
            offsets = await admin.list_consumer_group_offsets(group, partitions=partitions)
            committed = {tp.partition: meta.offset for tp, meta in offsets.items()}
            if all(committed.get(p, -1) >= end for p, end in ends.items()):
                return
            await asyncio.sleep(0.2)
    finally:
        await admin.close()
    raise TimeoutError(f"events not all committed within {timeout_s:.0f}s: {log_path}")


async def _terminate(process: asyncio.subprocess.Process) -> None:
    if process.returncode is None:
        process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), 60)
        except TimeoutError:
            process.kill()
            await process.wait()


# --- the measurement -------------------------------------------------------------------------


_LOSSLESS: dict[str, dict[str, object]] = {
    "WEBP": {"lossless": True},
    "TIFF": {"compression": "tiff_deflate"},
}


def maximal_corpus(settings: Settings, big_events: int, decode_events: int) -> list[bytes]:
    """Inline events as large as the settings let through, interleaved with images that decode
    to the largest frames the decode limit admits, in formats with different frame buffers."""
    imaging = settings.imaging
    big = inline_event(noise_jpeg(int(imaging.max_image_bytes * 0.98)))
    heavy = []
    # (format, mode, decode bytes per pixel): decode_memory_bytes's figures.
    for fmt, mode, per_pixel in (
        ("PNG", "RGBA", 4),
        ("PNG", "I;16", 2),
        ("WEBP", "RGB", 16),
        ("TIFF", "CMYK", 4),
    ):
        room = imaging.max_decode_bytes - 64 * MiB  # tiles and encoded bytes
        side = int(min(imaging.max_pixels, room // per_pixel) ** 0.5)
        image = flat_image(mode, (side, side), fmt, **_LOSSLESS.get(fmt, {}))
        heavy.append(inline_event(image))
    corpus: list[bytes] = []
    for index in range(max(big_events, decode_events)):
        if index < big_events:
            corpus.append(big)
        if index < decode_events:
            corpus.append(heavy[index % len(heavy)])
    return corpus


async def measure(work: Path, quick: bool) -> dict[str, object]:
    with TansuBroker(log_path=work / "tansu.log", ready_timeout_s=30) as broker:
        triton = TritonServer(
            model_repository=clone_root() / "triton_repo",
            work_dir=work / "triton",
            models=["nsfw_mobilenet_v2"],
        )
        triton.start(deadline_s=120)
        try:
            return await _measure(broker.bootstrap_servers, triton.grpc_url, work, quick)
        finally:
            triton.close()


def invalid_event(size: int) -> bytes:
    """An event of ``size`` bytes whose image is not base64: dead-lettered, the original
    carried back in the dead letter when it fits a produce request."""
    body = {
        "event_id": f"mem-{uuid.uuid4().hex}",
        "tenant_id": "acme",
        "created_at": datetime.now(UTC).isoformat(),
        "image_b64": "",
    }
    padding = size - len(json.dumps(body))
    body["image_b64"] = "A" * (padding - padding % 4 - 4) + "A$=="
    return json.dumps(body).encode()


async def _measure(bootstrap: str, triton_url: str, work: Path, quick: bool) -> dict[str, object]:
    defaults = Settings()
    fetch = defaults.kafka.fetch_max_bytes
    base = await idle_rss(bootstrap, triton_url, work)
    # In-flight factor: the same large inline events under different in-flight bounds; decode
    # stays cheap (noise JPEGs are decoded at 1/8 scale), so the slope is the records' cost.
    big = inline_event(noise_jpeg(int(defaults.imaging.max_image_bytes * 0.98)))
    runs: list[dict[str, float]] = []
    for bound_mib in (32, 64, 128) if not quick else (32, 128):
        env = {"MODSTREAM_FLOW__MAX_INFLIGHT_BYTES": str(bound_mib * MiB)}
        result = await run_corpus(bootstrap, triton_url, [big] * 40, work, env)
        runs.append(
            {
                "max_inflight_mib": bound_mib,
                "held_mib": bound_mib + 2 * fetch / MiB,
                "peak_rss_mib": round(result.peak_rss_bytes / MiB, 1),
            }
        )
    slope, intercept = np.polyfit(
        [r["held_mib"] for r in runs], [r["peak_rss_mib"] for r in runs], 1
    )
    # Dead letters carry the original record back (base64, inside JSON): the costliest path
    # per record byte, checked against the in-flight term alone.
    invalid = invalid_event(int(defaults.kafka.producer_max_request_size * 0.7))
    dead = await run_corpus(bootstrap, triton_url, [invalid] * 40, work)
    corpus = maximal_corpus(defaults, big_events=40, decode_events=12)
    maximal = await run_corpus(bootstrap, triton_url, corpus, work)
    terms = memory_terms(defaults)
    return {
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "cpus": os.cpu_count(),
        "event_mib": round(len(big) / MiB, 1),
        "idle_rss_mib": round(base / MiB, 1),
        "inflight_runs": runs,
        "inflight_slope": round(float(slope), 2),
        "inflight_intercept_mib": round(float(intercept), 1),
        "dead_letter_run": {
            "event_mib": round(len(invalid) / MiB, 1),
            "peak_rss_mib": round(dead.peak_rss_bytes / MiB, 1),
            "base_plus_in_flight_term_mib": round((terms["base"] + terms["in_flight"]) / MiB, 1),
            "dead_letters": dead.dead_letters,
        },
        "model": asdict(MODEL),
        "defaults_bound_mib": round(memory_bound(defaults) / MiB, 1),
        "defaults_terms_mib": {k: round(v / MiB, 1) for k, v in terms.items()},
        "maximal_corpus": {
            **asdict(maximal),
            "peak_rss_mib": round(maximal.peak_rss_bytes / MiB, 1),
        },
    }


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer runs (about 2 minutes)")
    parser.add_argument("--out", type=Path, help="default: bench/results/memory.json")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="modstream-memory-") as folder:
        results = asyncio.run(measure(Path(folder), args.quick))
    out = args.out or clone_root() / "bench" / "results" / "memory.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    sys.stdout.write(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
