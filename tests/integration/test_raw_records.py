"""Raw-image records end to end, on the real broker and tritonserver: `modstream produce --raw`
publishes them, the consumer decides them exactly like the same images as JSON events, and a
raw record with a bad header is dead-lettered with the JSON form's reason code."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest

from bench.local.tansu import TansuBroker, ensure_topics
from bench.local.triton import TritonServer
from bench.samples import photos
from consumer.contract.events import DeadLetter
from consumer.contract.reasons import ReasonCode
from consumer.produce import raw_record
from tests.integration.test_pipeline import (
    PARTITIONS,
    decisions_by_id,
    image_event,
    make_settings,
    output_topics,
    running,
)
from tests.support.kafka_io import produce_all, read_until

pytestmark = pytest.mark.integration


async def test_raw_and_json_forms_of_an_image_get_the_same_decision(
    broker: TansuBroker, triton: TritonServer, tmp_path: Path
) -> None:
    settings = make_settings(broker, triton, max_batch_size=4, max_wait_ms=5)
    kafka = settings.kafka
    outputs = output_topics(settings)
    await ensure_topics(
        kafka.bootstrap_servers, {kafka.input_topic: PARTITIONS, **{t: 1 for t in outputs}}
    )
    samples = photos()[:3]
    folder = tmp_path / "images"
    folder.mkdir()
    for sample in samples:
        (folder / f"{sample.name}.jpg").write_bytes(sample.data)
    produced = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "consumer", "produce", str(folder), "--raw",
         "--bootstrap", kafka.bootstrap_servers, "--topic", kafka.input_topic, "--tenant", "acme"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert produced.returncode == 0, produced.stderr
    bad = raw_record(samples[0].data, "acme", "image/jpeg", event_id="raw-bad")
    bad_headers = [(k, v) for k, v in bad.headers if k != "tenant-id"]
    records: list[tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]] = [
        (f"json-{s.name}".encode(), image_event(f"json-{s.name}", "acme", s.data), [])
        for s in samples
    ]
    records.append((bad.key, bad.value, bad_headers))
    await produce_all(kafka.bootstrap_servers, kafka.input_topic, records)
    async with running(settings):
        messages = await read_until(kafka.bootstrap_servers, outputs, 7, timeout_s=60)
    decisions = decisions_by_id([m for m in messages if m.topic != settings.topics.dead_letter])
    raw = [d for event_id, d in decisions.items() if not event_id.startswith("json-")]
    assert len(raw) == 3
    by_scores = {tuple(sorted(d.scores.items())): d for d in raw}
    for sample in samples:
        json_form = decisions[f"json-{sample.name}"]
        twin = by_scores[tuple(sorted(json_form.scores.items()))]
        assert twin.action is json_form.action
    for message in messages:
        if message.topic == settings.topics.dead_letter:
            continue
        content_types = [v for k, v in message.headers if k == "content-type"]
        assert content_types == [b"application/json"]  # the input's image/* is not carried
    (letter,) = [
        DeadLetter.model_validate_json(m.value or b"")
        for m in messages
        if m.topic == settings.topics.dead_letter
    ]
    assert letter.reason_code == ReasonCode.EVENT_INVALID
    assert "header tenant-id" in letter.reason
