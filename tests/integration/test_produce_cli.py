from __future__ import annotations

import asyncio
import base64
import io
import subprocess
import sys
import uuid
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from bench.local.tansu import TansuBroker
from consumer.contract.events import ImageEvent
from tests.support.kafka_io import read_until

pytestmark = pytest.mark.integration


async def test_produce_publishes_a_folder_round_robin(broker: TansuBroker, tmp_path: Path) -> None:
    images = tmp_path / "images"
    images.mkdir()
    originals = {}
    for name, colour in (("a.png", (255, 0, 0)), ("b.jpg", (0, 255, 0))):
        out = io.BytesIO()
        Image.new("RGB", (32, 32), colour).save(
            out, format="PNG" if name.endswith("png") else "JPEG"
        )
        (images / name).write_bytes(out.getvalue())
        originals[name] = out.getvalue()
    (images / "notes.txt").write_text("not an image")
    topic = f"produce-{uuid.uuid4().hex[:8]}"
    result = await asyncio.to_thread(
        subprocess.run,
        [
            sys.executable,
            "-m",
            "consumer",
            "produce",
            str(images),
            "--bootstrap",
            broker.bootstrap_servers,
            "--topic",
            topic,
            "--tenant",
            "t1",
            "--tenant",
            "t2",
            "--count",
            "6",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "published 6 events" in result.stdout
    messages = await read_until(broker.bootstrap_servers, [topic], 6, timeout_s=20)
    events = [ImageEvent.model_validate_json(m.value or b"") for m in messages]
    assert len(events) == 6
    assert Counter(e.tenant_id for e in events) == {"t1": 3, "t2": 3}
    assert {base64.b64decode(e.image_b64 or "") for e in events} == set(originals.values())
    assert all(m.key == e.event_id.encode() for m, e in zip(messages, events, strict=True))
