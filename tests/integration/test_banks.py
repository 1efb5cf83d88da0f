"""A tenant's bank blocks re-uploads of its images, and only for that tenant.

The bank is built with the CLI against the real tritonserver; the consumer runs on the real
broker with the bank folder mounted, as in production.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from bench.local.tansu import TansuBroker, ensure_topics
from bench.local.triton import TritonServer
from bench.samples import photos
from consumer.contract.events import Action
from consumer.runtime.settings import BankSettings
from tests.integration.test_pipeline import (
    PARTITIONS,
    decisions_by_id,
    image_event,
    make_settings,
    output_topics,
    running,
    wait_committed,
)
from tests.support.kafka_io import produce_all, read_until

pytestmark = pytest.mark.integration


def _bank_cli(triton: TritonServer, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MODSTREAM_TRITON__URL": triton.grpc_url}
    return subprocess.run(
        [sys.executable, "-m", "consumer", "bank", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _reencoded(data: bytes) -> bytes:
    out = io.BytesIO()
    Image.open(io.BytesIO(data)).convert("RGB").resize((300, 260)).save(out, "JPEG", quality=60)
    return out.getvalue()


async def test_bank_blocks_reuploads_for_its_tenant_only(
    broker: TansuBroker, triton: TritonServer, tmp_path: Path
) -> None:
    coffee = next(p for p in photos() if p.name == "coffee")
    source = tmp_path / "reported-coffee.jpg"
    source.write_bytes(coffee.data)
    banks = tmp_path / "banks"
    added = _bank_cli(
        triton,
        "add",
        str(banks / "kids-known-bad"),
        str(source),
        "--label",
        "report-42",
        "--tenant",
        "kids-app",
    )
    assert added.returncode == 0, added.stderr
    listed = _bank_cli(triton, "list", str(banks / "kids-known-bad"))
    assert "reported-coffee\treport-42" in listed.stdout
    refused = _bank_cli(triton, "add", str(banks / "new-bank"), str(source), "--label", "x")
    assert refused.returncode == 2
    assert "--tenant" in refused.stderr

    settings = make_settings(broker, triton, max_batch_size=4, max_wait_ms=5)
    settings = settings.model_copy(update={"banks": BankSettings(path=banks)})
    kafka = settings.kafka
    outputs = output_topics(settings)
    await ensure_topics(
        kafka.bootstrap_servers, {kafka.input_topic: PARTITIONS, **{t: 1 for t in outputs}}
    )
    copy = _reencoded(coffee.data)
    other = next(p for p in photos() if p.name == "chelsea").data
    records: list[tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]] = [
        (b"kids-original", image_event("kids-original", "kids-app", coffee.data), []),
        (b"kids-copy", image_event("kids-copy", "kids-app", copy), []),
        (b"acme-copy", image_event("acme-copy", "acme", copy), []),
        (b"kids-other", image_event("kids-other", "kids-app", other), []),
    ]
    ends = await produce_all(kafka.bootstrap_servers, kafka.input_topic, records)
    async with running(settings):
        await wait_committed(settings, ends, timeout_s=60)
    messages = await read_until(kafka.bootstrap_servers, outputs, len(records), timeout_s=20)
    decisions = decisions_by_id(messages)
    for event_id in ("kids-original", "kids-copy"):
        decision = decisions[event_id]
        assert decision.action is Action.BLOCK, event_id
        reason = decision.reasons[0]
        assert (reason.rule, reason.bank_id) == ("exemplar_match", "kids-known-bad")
        assert reason.entry_id == "reported-coffee"
    assert decisions["acme-copy"].action is Action.ALLOW, "another tenant's bank must not apply"
    assert not any(r.rule == "exemplar_match" for r in decisions["kids-other"].reasons)

    removed = _bank_cli(triton, "remove", str(banks / "kids-known-bad"), "reported-coffee")
    assert removed.returncode == 0, removed.stderr
    assert "0 entries" in removed.stdout
