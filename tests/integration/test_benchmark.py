"""``modstream bench`` in quick mode, with a broker and a Triton of its own."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from bench.e2e import (
    TARGET_OUTSIDE_DECODE_AND_INFERENCE_MS,
    TARGET_VS_MACHINE_LIMIT,
    TARGET_VS_NAIVE,
    TARGET_VS_RAW_TRITON,
    run_benchmark,
    supported_modes,
)
from tests.support.paths import REPO_ROOT

pytestmark = pytest.mark.integration

EVENTS = 40


def test_quick_benchmark_reports_every_measurement(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_benchmark(events=EVENTS, megapixels=1.0, out_dir=tmp_path, quick=True) == 0

    stamped = list(tmp_path.glob("bench-*.json"))
    assert len(stamped) == 1
    report = json.loads((tmp_path / "latest.json").read_text())
    assert report == json.loads(stamped[0].read_text())

    measured = report["measurements"]
    raw = measured["raw_triton"]
    assert raw["images_per_s"] > 0
    assert raw["images"] >= EVENTS
    assert raw["batch_size"] == report["settings"]["consumer"]["batching"]["max_batch_size"]
    assert sum(measured["publish_backlog"]["ends"].values()) == EVENTS
    for name in ("end_to_end", "naive"):
        result = measured[name]
        assert result["decisions_per_s"] > 0
        assert result["events"] == result["decisions"] == EVENTS
        assert result["dead_letters"] == result["duplicates"] == 0
        assert 0 < result["startup_s"] < result["all_committed_s"]
    latency = measured["latency"]
    assert latency["events"] == latency["decisions"] > 0
    assert 0 < latency["p50_ms"] <= latency["p99_ms"] <= latency["max_ms"]

    e2e = measured["end_to_end"]["decisions_per_s"]
    ratios = report["ratios"]
    assert ratios["end_to_end_vs_raw_triton"] == pytest.approx(e2e / raw["images_per_s"], rel=1e-2)
    assert ratios["end_to_end_vs_naive"] == pytest.approx(
        e2e / measured["naive"]["decisions_per_s"], rel=1e-2
    )
    targets = report["targets"]
    for name, wanted in (
        ("end_to_end_vs_raw_triton", TARGET_VS_RAW_TRITON),
        ("end_to_end_vs_naive", TARGET_VS_NAIVE),
    ):
        assert targets[name]["target_at_least"] == wanted
        assert targets[name]["met"] is (ratios[name] >= wanted)
    assert report["machine"]["cpu_count"] >= 1
    assert report["images"]["megapixels"] == pytest.approx([1.0] * 4, abs=0.01)
    phases = {"raw_triton", "end_to_end", "latency", "naive", "peer", "passthrough"}
    assert phases <= set(report["cpu_by_phase"])

    assert report["settings"]["event_format"] == "json"
    _check_ceiling(report)
    _check_consumers(report)

    table = capsys.readouterr().out
    for label in (
        "raw Triton",
        "end to end",
        "naive consumer",
        "peer consumer",
        "machine limit",
        "p99",
        "end_to_end_vs_naive",
        "end_to_end_vs_machine_limit",
        "lag ms",
    ):
        assert label in table


def test_quick_benchmark_over_raw_image_records(tmp_path: Path) -> None:
    """Raw-image records go through every consumer; their stages alone have no base64."""
    assert (
        run_benchmark(
            events=EVENTS,
            megapixels=1.0,
            out_dir=tmp_path,
            quick=True,
            modes=["threads"],
            raw=True,
        )
        == 0
    )

    report = json.loads((tmp_path / "latest.json").read_text())
    assert report["settings"]["event_format"] == "raw"
    assert report["ceiling"]["base64_ms"] == 0
    assert report["cpu_per_event_ms_single_thread"]["decode_base64_cpu_ms"] == 0
    assert "no base64" in report["ceiling"]["method"]["parse_ms, base64_ms, decode_ms"]
    # The JPEG is the value: no base64 inflation of a third.
    assert report["images"]["event_bytes_mean"] < report["images"]["jpeg_bytes_mean"] * 1.1
    consumers = report["consumers"]
    assert list(consumers) == ["threads", "peer", "naive"]
    for name, run in consumers.items():
        assert run["decisions"] == EVENTS, name
        assert run["dead_letters"] == run["duplicates"] == 0, name
    latency = report["measurements"]["latency"]
    assert latency["events"] == latency["decisions"] > 0


def _check_ceiling(report: dict[str, Any]) -> None:
    """The machine limit is cores over the stages measured alone, each one present."""
    ceiling = report["ceiling"]
    assert ceiling["cores"] == report["machine"]["usable_cpus"]
    stages = ("parse_ms", "base64_ms", "decode_ms", "inference_ms", "broker_ms")
    assert all(ceiling[stage] >= 0 for stage in stages)
    assert ceiling["decode_ms"] > 0
    assert ceiling["inference_ms"] > 0
    assert ceiling["per_event_ms"] == pytest.approx(sum(ceiling[s] for s in stages), abs=0.01)
    assert ceiling["decisions_per_s"] == pytest.approx(
        ceiling["cores"] * 1000 / ceiling["per_event_ms"], rel=1e-2
    )
    assert set(ceiling["method"]) >= {"inference_ms", "broker_ms", "cpu_per_event_ms"}
    by_batch = report["measurements"]["raw_triton_by_batch_size"]
    assert all(r["triton_cpu_ms_per_image"] > 0 for r in by_batch)
    cheapest = min(by_batch, key=lambda r: r["triton_cpu_ms_per_image"])
    assert ceiling["inference_batch_size"] == cheapest["batch_size"]
    single = report["cpu_per_event_ms_single_thread"]
    assert single["decode_image_cpu_ms"] == ceiling["decode_ms"]
    broker = report["measurements"]["broker_alone"]
    assert broker["events"] == EVENTS
    assert broker["broker_cpu_ms_per_event"] == ceiling["broker_ms"]
    assert broker["decision_bytes"] > 0
    ratio = report["measurements"]["end_to_end"]["decisions_per_s"] / ceiling["decisions_per_s"]
    assert report["ratios"]["end_to_end_vs_machine_limit"] == pytest.approx(ratio, rel=1e-2)


def _check_consumers(report: dict[str, Any]) -> None:
    """Every consumer's throughput, CPU per decided event by process, and peak memory."""
    modes = report["modes"]
    assert modes[0] == "threads"
    assert set(modes) <= set(supported_modes())
    consumers = report["consumers"]
    assert list(consumers) == [*modes, "peer", "naive"]
    assert (
        consumers[modes[0]]["decisions_per_s"]
        == (report["measurements"]["end_to_end"]["decisions_per_s"])
    )
    limit = report["ceiling"]
    for name, run in consumers.items():
        assert run["decisions"] == EVENTS, name
        assert run["dead_letters"] == run["duplicates"] == 0, name
        cpu = run["cpu_per_event_ms"]
        deciding = cpu["consumer"] + cpu["triton"] + cpu["broker"]
        assert cpu["total"] == pytest.approx(deciding, abs=0.01), name
        assert cpu["consumer"] > 0, name
        assert cpu["triton"] > 0, name
        assert run["window"]["events"] == EVENTS - 1, name
        assert run["peak_rss_mb"] > 0, name
        assert run["peak_group_rss_mb"] > 0, name
        assert run["triton_mean_batch"] >= 1, name
        assert run["vs_machine_limit"] == pytest.approx(
            run["decisions_per_s"] / limit["decisions_per_s"], rel=1e-2
        )
        assert 0 < run["machine_limit_on_free_cores"] <= limit["decisions_per_s"]
        assert run["outside_decode_and_inference_ms"] == pytest.approx(
            cpu["total"] - limit["decode_ms"] - limit["inference_ms"], abs=0.01
        )
        lag = run["loop_lag"]
        if run["kind"] == "pipeline":
            assert lag["wakeups"] > 0, name
            assert lag["mean_ms"] >= 0, name
            assert 0 <= lag["over_100ms_share"] <= 1, name
        else:
            assert lag is None, name
    assert consumers["peer"]["kind"] == "peer"
    assert consumers["peer"]["settings"]["max_inflight_events"] > 1
    assert report["memory"]["consumer_peak_rss_mb"]["peer"] == consumers["peer"]["peak_rss_mb"]

    targets = report["targets"]
    machine = targets["end_to_end_vs_machine_limit"]
    assert machine["target_at_least"] == TARGET_VS_MACHINE_LIMIT
    assert machine["met"] is (machine["value"] >= TARGET_VS_MACHINE_LIMIT)
    outside = targets["outside_decode_and_inference_ms"]
    assert outside["target_at_most"] == TARGET_OUTSIDE_DECODE_AND_INFERENCE_MS
    assert outside["met"] is (outside["value"] <= TARGET_OUTSIDE_DECODE_AND_INFERENCE_MS)
    assert outside["value"] == consumers[outside["mode"]]["outside_decode_and_inference_ms"]
    assert (
        consumers["threads"]["targets"]["outside_decode_and_inference_ms"]["value"]
        == (outside["value"])
    )


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_interrupted_benchmark_stops_its_servers(tmp_path: Path, signum: signal.Signals) -> None:
    """A signal mid-run stops the consumer, the broker and Triton, and exits 130."""
    # Every server the run starts keeps its log (or work directory) under this TMPDIR, so any
    # process still holding a file open there after the exit would be a leftover.
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    log = tmp_path / "bench.log"
    with log.open("wb") as output:
        bench = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "consumer",
                "bench",
                "--events",
                "20",
                "--megapixels",
                "0.5",
                "--out",
                str(tmp_path / "out"),
            ],
            cwd=REPO_ROOT,
            env={**os.environ, "TMPDIR": str(scratch)},
            stdout=output,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + 60
            while "end to end" not in log.read_text() and time.monotonic() < deadline:
                assert bench.poll() is None, log.read_text()
                time.sleep(0.1)
            bench.send_signal(signum)
            assert bench.wait(timeout=60) == 130, log.read_text()
        finally:
            if bench.poll() is None:
                bench.kill()
    assert not list((tmp_path / "out").glob("*.json"))
    assert _holding_files_under(scratch) == []


def _holding_files_under(directory: Path) -> list[int]:
    holders = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            targets = [os.readlink(fd) for fd in (proc / "fd").iterdir()]
        except OSError:
            continue
        if any(target.startswith(str(directory)) for target in targets):
            holders.append(int(proc.name))
    return holders
