"""The machine limit, CPU per decided event and the overhead figure, from made-up samples."""

from __future__ import annotations

import pytest

from bench.e2e.ceiling import (
    TARGET_OUTSIDE_DECODE_AND_INFERENCE_MS,
    TARGET_VS_MACHINE_LIMIT,
    build_ceiling,
    cpu_per_event,
    free_cores_limit,
    outside_decode_and_inference_ms,
    run_targets,
    summarize_run,
)
from bench.e2e.cpu import Sample, cpu_between, phase_cpu
from bench.e2e.peer import _Offsets
from bench.e2e.results import (
    BrokerAlone,
    ConsumerRun,
    PhaseCpu,
    RawTritonResult,
    StageMeans,
    StreamResult,
)
from bench.e2e.stages import cheapest

COSTS = {"parse_event_cpu_ms": 1.0, "decode_base64_cpu_ms": 0.5, "decode_image_cpu_ms": 12.5}


def _raw(batch_size: int, triton_ms: float | None, images_per_s: float = 100.0) -> RawTritonResult:
    return RawTritonResult(
        400, 400 // batch_size, batch_size, 4, 4.0, images_per_s, 10.0, triton_ms
    )


def _broker(ms: float) -> BrokerAlone:
    return BrokerAlone(400, 2.0, 200.0, ms, ms, 1.0, 600, 2.0)


def _run(name: str, decisions_per_s: float, cpu_s: dict[str, float]) -> ConsumerRun:
    means = StageMeans(0.0, 0.0, 0.0, 0.0, 0.0)
    stream = StreamResult(101, 101, 0, 0, 2.0, decisions_per_s, 1.0, 4.0, means, 4.0, 10.0, 12.0)
    window = phase_cpu({}, cpu_s, 2.0)
    return ConsumerRun(
        name, "pipeline", {}, stream, cpu_per_event(window, 100), window, 100.0, 150.0, 4.0
    )


def test_the_limit_is_cores_over_the_sum_of_the_stages() -> None:
    inference = cheapest([_raw(1, 30.0), _raw(8, 12.0), _raw(32, 14.0)])
    assert inference.batch_size == 8
    ceiling = build_ceiling(2, COSTS, inference, _broker(4.0))
    assert ceiling is not None
    assert ceiling.per_event_ms == pytest.approx(1.0 + 0.5 + 12.5 + 12.0 + 4.0)
    assert ceiling.decisions_per_s == pytest.approx(2000 / 30.0, abs=0.01)
    assert ceiling.inference_batch_size == 8


def test_without_triton_cpu_there_is_no_limit() -> None:
    assert cheapest([_raw(1, None, 50.0), _raw(8, None, 90.0)]).batch_size == 8
    assert build_ceiling(2, COSTS, _raw(8, None), _broker(4.0)) is None


def test_cpu_per_event_totals_the_deciding_processes_only() -> None:
    cpu = cpu_per_event(
        PhaseCpu(
            2.0,
            {"consumer": 1.5, "triton": 1.2, "broker": 0.3, "harness": 0.1, "other_processes": 2},
            {},
        ),
        100,
    )
    assert cpu.by_process_ms == {
        "consumer": 15.0,
        "triton": 12.0,
        "broker": 3.0,
        "harness": 1.0,
        "other_processes": 20.0,
    }
    assert cpu.total_ms == pytest.approx(30.0)


def test_outside_is_total_less_decode_and_inference_alone_and_targets_follow() -> None:
    ceiling = build_ceiling(2, COSTS, _raw(8, 12.0), _broker(4.0))
    assert ceiling is not None
    good = _run("threads", 0.95 * ceiling.decisions_per_s, {"consumer": 1.5, "triton": 1.2})
    assert good.cpu.total_ms == pytest.approx(27.0)
    assert outside_decode_and_inference_ms(good.cpu, ceiling) == pytest.approx(27 - 12.5 - 12)
    targets = run_targets(good, ceiling)
    assert targets["end_to_end_vs_machine_limit"]["target_at_least"] == TARGET_VS_MACHINE_LIMIT
    assert targets["end_to_end_vs_machine_limit"]["met"] is True
    limit = targets["outside_decode_and_inference_ms"]
    assert limit["target_at_most"] == TARGET_OUTSIDE_DECODE_AND_INFERENCE_MS
    assert limit["met"] is True

    slow = _run("workers", 0.5 * ceiling.decisions_per_s, {"consumer": 2.5, "triton": 1.2})
    missed = run_targets(slow, ceiling)
    assert missed["end_to_end_vs_machine_limit"]["met"] is False
    assert missed["outside_decode_and_inference_ms"]["met"] is False
    # The decode targets are the consumer-decode modes'; Triton decoding is reported only.
    assert run_targets(_run("triton", 10.0, {"triton": 3.0}), ceiling) == {}
    summary = summarize_run(good, ceiling)
    assert summary["vs_machine_limit"] == pytest.approx(0.95, abs=0.001)
    # Nothing else ran: the limit on the free cores is the limit.
    assert summary["machine_limit_on_free_cores"] == pytest.approx(ceiling.decisions_per_s)
    shared = _run("threads", 30.0, {"consumer": 1.5, "triton": 1.2, "other_processes": 1.0})
    assert shared.cpu.cores_busy["other_processes"] == 0.5
    assert free_cores_limit(shared, ceiling) == pytest.approx(1.5 * 1000 / 30.0, abs=0.01)
    assert summary["peak_group_rss_mb"] == 150.0


def test_the_sampler_interpolates_between_samples() -> None:
    samples = [
        Sample(100.0, {"consumer": 0.0, "broker": 0.0}, None),
        Sample(101.0, {"consumer": 1.0, "broker": 0.2}, 1000),
        Sample(103.0, {"consumer": 2.0, "broker": 0.2}, 3000),
    ]
    window = cpu_between(samples, 100.5, 102.0)
    assert window.wall_s == 1.5
    assert window.cpu_s == {"consumer": pytest.approx(1.0), "broker": pytest.approx(0.1)}
    assert cpu_between(samples, 90.0, 200.0).cpu_s == {"consumer": 2.0, "broker": 0.2}


def test_the_peer_commits_only_contiguous_completed_offsets() -> None:
    offsets = _Offsets()
    for offset in (5, 6, 7):
        offsets.started(0, offset)
    offsets.finished(0, 6)
    assert offsets.committable() == {}
    offsets.finished(0, 5)
    assert offsets.committable() == {0: 7}
    offsets.finished(0, 7)
    assert offsets.committable() == {0: 8}
    assert offsets.committable() == {}
