"""Thousands of hostile events through a real consumer: every one dead-lettered, for the right
reason, with no crash and bounded memory."""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

import pytest

from bench.audit import audit, read_to_end
from bench.local.process import proc_status_kib
from bench.local.tansu import TansuBroker, ensure_topics
from bench.local.triton import TritonServer
from bench.memory_model import ALLOCATOR_ENV
from tests.integration.test_pipeline import PARTITIONS, make_settings, output_topics, wait_committed
from tests.support.hostile import MAX_DECODE_BYTES, MAX_IMAGE_BYTES, MAX_PIXELS, hostile_events
from tests.support.kafka_io import ends_of, produce_positions
from tests.support.processes import ConsumerProcess, consumer_env

pytestmark = pytest.mark.integration

# The consumer process's peak resident memory (VmHWM) must stay under this while it rejects
# the corpus; it includes Python, PyTorch-free imports, gRPC and Kafka clients.
RSS_BOUND_MB = 400


def _peak_rss_mb(pid: int) -> float:
    kib = proc_status_kib(pid, "VmHWM")
    if kib is None:
        raise RuntimeError(f"no VmHWM for pid {pid}")
    return kib / 1024


async def hostile_run(
    broker: TansuBroker,
    triton: TritonServer,
    work: Path,
    count: int,
    seed: int,
    extra_env: dict[str, str] | None = None,
) -> tuple[Counter[str], float]:
    settings = make_settings(broker, triton)
    kafka = settings.kafka
    outputs = output_topics(settings)
    await ensure_topics(
        kafka.bootstrap_servers, {kafka.input_topic: PARTITIONS, **{t: 1 for t in outputs}}
    )
    corpus = hostile_events(count, seed)
    positions = await produce_positions(
        kafka.bootstrap_servers,
        kafka.input_topic,
        [(f"h-{i}".encode(), value, []) for i, (value, _) in enumerate(corpus)],
    )
    expected = {position: code for position, (_, code) in zip(positions, corpus, strict=True)}
    ends = ends_of(positions)

    # With the allocator settings of the deployment: glibc's default keeps freed frame buffers
    # resident and the peak then varies by 300 MB from run to run (bench/memory.py).
    env = (
        consumer_env(settings)
        | ALLOCATOR_ENV
        | {
            "MODSTREAM_IMAGING__MAX_IMAGE_BYTES": str(MAX_IMAGE_BYTES),
            "MODSTREAM_IMAGING__MAX_PIXELS": str(MAX_PIXELS),
            "MODSTREAM_IMAGING__MAX_DECODE_BYTES": str(MAX_DECODE_BYTES),
        }
        | (extra_env or {})
    )
    member = ConsumerProcess(env, work / "consumer.log")
    await member.start()
    try:
        await wait_committed(settings, ends, timeout_s=600)
        assert member.process is not None
        peak_mb = _peak_rss_mb(member.process.pid)
    finally:
        code = await member.terminate()
    assert code == 0, member.log_since_start()

    report = await audit(
        kafka.bootstrap_servers, kafka.input_topic, outputs, settings.topics.dead_letter
    )
    assert report.missing == []
    assert report.conflicting == []
    assert report.decisions == 0, "a hostile event was decided instead of dead-lettered"
    letters = await read_to_end(kafka.bootstrap_servers, [settings.topics.dead_letter])
    wrong: Counter[tuple[str, str]] = Counter()
    codes: Counter[str] = Counter()
    for letter in letters:
        body = json.loads(letter.value or b"")
        source = body["source"]
        want = expected[(source["partition"], source["offset"])]
        codes[body["reason_code"]] += 1
        if body["reason_code"] != want:
            wrong[(want, body["reason_code"])] += 1
    assert not wrong, f"wrong reason codes (expected, got): {dict(wrong)}"
    assert sum(codes.values()) >= count
    return codes, peak_mb


async def test_hostile_corpus_is_dead_lettered_with_the_right_reasons(
    broker: TansuBroker, triton: TritonServer, tmp_path: Path
) -> None:
    codes, peak_mb = await hostile_run(broker, triton, tmp_path, count=2_100, seed=11)
    assert set(codes) == {code for _, code in hostile_events(100, 0)}
    assert peak_mb < RSS_BOUND_MB
    sys.stderr.write(
        f"\nhostile corpus (CI): {sum(codes.values())} dead letters, peak RSS {peak_mb:.0f} MB\n"
    )


async def test_hostile_corpus_decoded_in_worker_processes_and_triton_gets_the_same_reasons(
    broker: TansuBroker, triton: TritonServer, tmp_path: Path
) -> None:
    """The checks before forwarding and Triton's preprocess step refuse what the consumer's
    own decode refuses, with the same codes; worker processes survive the corpus."""
    codes, _ = await hostile_run(
        broker,
        triton,
        tmp_path,
        count=700,
        seed=13,
        extra_env={
            "MODSTREAM_IMAGING__DECODE_IN": "triton",
            "MODSTREAM_IMAGING__DECODE_POOL": "processes",
        },
    )
    assert set(codes) == {code for _, code in hostile_events(100, 0)}


@pytest.mark.slow
async def test_hostile_corpus_full(
    broker: TansuBroker, triton: TritonServer, tmp_path: Path
) -> None:
    codes, peak_mb = await hostile_run(broker, triton, tmp_path, count=10_500, seed=12)
    assert peak_mb < RSS_BOUND_MB
    sys.stderr.write(
        f"\nhostile corpus (full): {sum(codes.values())} dead letters {dict(codes)}, "
        f"peak RSS {peak_mb:.0f} MB\n"
    )
