"""Corpora for the memory measurement: large inline events, cheap or costly to decode."""

from __future__ import annotations

import base64
import io
import json
import uuid
from datetime import UTC, datetime

import numpy as np
from PIL import Image


def noise_jpeg(approx_bytes: int, seed: int = 0) -> bytes:
    """A JPEG of random noise of at most ``approx_bytes`` (within a few percent): many bytes
    that are cheap to decode, since the decoder scales a JPEG down in the DCT domain."""
    rng = np.random.default_rng(seed)

    def encode(side: int) -> bytes:
        out = io.BytesIO()
        pixels = rng.integers(0, 256, (side, side, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(out, "JPEG", quality=95)
        return out.getvalue()

    sample = 512
    per_pixel = len(encode(sample)) / sample**2
    side = int((approx_bytes / per_pixel) ** 0.5)
    data = encode(side)
    while len(data) > approx_bytes:
        side = int(side * 0.98)
        data = encode(side)
    return data


def flat_image(mode: str, size: tuple[int, int], fmt: str, **options: object) -> bytes:
    """A one-colour image: a few kB that decode to a full frame buffer."""
    out = io.BytesIO()
    bands = Image.getmodebands(mode)
    colour = 128 if bands == 1 else (90,) * bands
    Image.new(mode, size, colour).save(out, fmt, **options)
    return out.getvalue()


def inline_event(image: bytes, tenant: str = "acme") -> bytes:
    body = {
        "event_id": f"mem-{uuid.uuid4().hex}",
        "tenant_id": tenant,
        "created_at": datetime.now(UTC).isoformat(),
        "image_b64": base64.b64encode(image).decode(),
    }
    return json.dumps(body).encode()
