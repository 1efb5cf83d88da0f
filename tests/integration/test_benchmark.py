"""``modstream bench`` in quick mode, with a broker and a Triton of its own."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench.e2e import TARGET_VS_NAIVE, TARGET_VS_RAW_TRITON, run_benchmark
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
    assert {"raw_triton", "end_to_end", "latency", "naive"} <= set(report["cpu_by_phase"])

    table = capsys.readouterr().out
    for label in ("raw Triton", "end to end", "naive consumer", "p99", "end_to_end_vs_naive"):
        assert label in table


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
