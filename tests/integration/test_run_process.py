"""``modstream run`` as operators run it: configured by env vars, stopped by SIGTERM."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from bench.local.tansu import TansuBroker, ensure_topics
from bench.local.triton import TritonServer
from bench.samples import standins
from tests.integration.test_pipeline import (
    PARTITIONS,
    TENANTS,
    image_event,
    make_settings,
    output_topics,
    png,
    wait_committed,
)
from tests.support.kafka_io import produce_all, read_until
from tests.support.processes import consumer_env

pytestmark = pytest.mark.integration


async def test_run_is_configured_from_env_and_drains_on_sigterm(
    broker: TansuBroker, triton: TritonServer, tmp_path: Path
) -> None:
    settings = make_settings(broker, triton)
    kafka = settings.kafka
    await ensure_topics(
        kafka.bootstrap_servers,
        {kafka.input_topic: PARTITIONS, **{t: 1 for t in output_topics(settings)}},
    )
    env = consumer_env(settings)
    log_path = tmp_path / "run.log"
    log = log_path.open("wb")
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "consumer", "run", env=env, stdout=log, stderr=log
    )
    try:
        records: list[tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]] = [
            (
                f"r-{i}".encode(),
                image_event(f"r-{i}", TENANTS[i % 3], png((220, 30, 30), (64, 64))),
                [],
            )
            for i in range(60)
        ]
        explicit = next(s for s in standins() if s.name == "explicit-high").data
        records.append((b"r-block", image_event("r-block", "kids-app", explicit), []))
        ends = await produce_all(kafka.bootstrap_servers, kafka.input_topic, records)
        await wait_committed(settings, ends, timeout_s=60)
        # SIGUSR2 only logs what the process is waiting on; it keeps running.
        process.send_signal(signal.SIGUSR2)
        await asyncio.sleep(1)
        assert process.returncode is None
        process.send_signal(signal.SIGTERM)
        returncode = await asyncio.wait_for(process.wait(), timeout=60)
    finally:
        if process.returncode is None:
            process.kill()
        log.close()
    stderr = log_path.read_text()
    assert returncode == 0, stderr[-2000:]
    lines = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    assert lines, "logs are JSON lines"
    assert any("draining" in line["msg"] for line in lines)
    assert any(line["msg"].startswith("pending task fetch:") for line in lines)
    assert any(line.get("model") == "nsfw_mobilenet_v2" for line in lines)
    # A block is an event of interest: one JSON line with where it came from and why.
    blocked = [line for line in lines if line.get("event_id") == "r-block"]
    assert len(blocked) == 1, blocked
    assert blocked[0]["action"] == "block"
    assert blocked[0]["reason"] == "sexual_explicit"
    assert blocked[0]["tenant"] == "kids-app"
    assert {"topic", "partition", "offset"} <= set(blocked[0])
    assert base64.b64encode(explicit[:30]).decode()[:20] not in stderr, "image bytes in logs"
    outcomes = await read_until(kafka.bootstrap_servers, output_topics(settings), 61, timeout_s=20)
    assert {m.key for m in outcomes} == {key for key, _, _ in records}


def test_run_refuses_a_bad_policy_with_exit_2() -> None:
    env = {**os.environ, "MODSTREAM_POLICY__PATH": "/nonexistent/policy.yaml"}
    result = subprocess.run(
        [sys.executable, "-m", "consumer", "run"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "cannot read policy file /nonexistent/policy.yaml" in result.stderr


async def test_sigterm_during_startup_is_a_clean_stop(
    broker: TansuBroker, triton: TritonServer, tmp_path: Path
) -> None:
    settings = make_settings(broker, triton)
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "consumer",
        "run",
        env=consumer_env(settings),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    # As soon as the process catches SIGTERM: well before the imports are done, let alone the
    # group joined. (Before that, the interpreter itself is starting and the default action
    # applies, as for any process.)
    await _wait_catches(process.pid, signal.SIGTERM)
    process.send_signal(signal.SIGTERM)
    _, stderr = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode == 0, stderr.decode()[-2000:]
    assert b"draining" in stderr


async def _wait_catches(pid: int, signum: int, timeout_s: float = 30.0) -> None:
    """Wait until process ``pid`` has a handler for ``signum`` (Linux: SigCgt in its status)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while loop.time() < deadline:
        if _catches(pid, signum):
            return
        await asyncio.sleep(0.005)
    raise TimeoutError(f"process {pid} did not install a handler for signal {signum}")


def _catches(pid: int, signum: int) -> bool:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) >> (signum - 1) & 1)
    return False
