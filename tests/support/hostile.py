"""Generated hostile events, each with the dead-letter reason code it must get.

Every kind is built from first principles (byte layouts of the formats, the contract's
rules), not by asking the consumer what it would say. ``hostile_event()`` is the hypothesis
strategy; ``hostile_events(count, seed)`` draws a reproducible corpus from it.
"""

from __future__ import annotations

import base64
import io
import json
import random
import struct
import zlib
from collections.abc import Callable
from datetime import UTC, datetime

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import seed as hyp_seed
from hypothesis import strategies as st
from PIL import Image

MAX_IMAGE_BYTES = 64 * 1024
MAX_PIXELS = 4_000_000
MAX_DECODE_BYTES = 64 * 1024 * 1024

Hostile = tuple[bytes | None, str]
"""(record value, expected reason code)."""


def _event(rng: random.Random, **fields: object) -> bytes:
    body: dict[str, object] = {
        "event_id": f"h-{rng.getrandbits(64):016x}",
        "tenant_id": "acme",
        "created_at": datetime.now(UTC).isoformat(),
    }
    body.update(fields)
    return json.dumps(body).encode()


def _inline(rng: random.Random, image: bytes) -> bytes:
    return _event(rng, image_b64=base64.b64encode(image).decode())


def _png(rng: random.Random) -> bytes:
    size = (rng.randint(16, 64), rng.randint(16, 64))
    pixels = rng.randbytes(size[0] * size[1] * 3)
    out = io.BytesIO()
    Image.frombytes("RGB", size, pixels).save(out, format="PNG")
    return out.getvalue()


def _jpeg(rng: random.Random) -> bytes:
    out = io.BytesIO()
    colour = (rng.randrange(256), rng.randrange(256), rng.randrange(256))
    Image.new("RGB", (rng.randint(32, 128), rng.randint(32, 128)), colour).save(out, "JPEG")
    return out.getvalue()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png_bomb(rng: random.Random) -> bytes:
    """A well-formed PNG whose header declares far more pixels than allowed."""
    side = rng.randint(2_001, 60_000)
    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 1024, 9)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", idat)
        + _chunk(b"IEND", b"")
    )


def _gif_bomb(rng: random.Random) -> bytes:
    width, height = rng.randint(4_001, 65_535), rng.randint(4_001, 65_535)
    screen = b"GIF89a" + struct.pack("<HH", width, height) + b"\x00\x00\x00"
    frame = b"\x2c" + struct.pack("<HHHH", 0, 0, width, height) + b"\x00"
    return screen + frame + b"\x02\x02\x44\x01\x00\x3b"


def _webp_decode_bomb(rng: random.Random) -> bytes:
    """A few kB of lossless WebP within the pixel cap whose decode needs more than
    MAX_DECODE_BYTES: libwebp holds about 16 bytes a pixel (two canvases and a copy)."""
    side = rng.randint(1_100, 2_000)
    out = io.BytesIO()
    colour = (rng.randrange(256), rng.randrange(256), rng.randrange(256))
    Image.new("RGB", (side, side), colour).save(out, "WEBP", lossless=True)
    return out.getvalue()


def _unsupported(rng: random.Random) -> bytes:
    choices = [
        b"%PDF-1.7\n" + rng.randbytes(rng.randint(10, 500)),
        b"<svg xmlns='http://www.w3.org/2000/svg'><rect/></svg>",
        b"just some text, not an image " * rng.randint(1, 20),
        b"\x00\x00\x01\x00" + rng.randbytes(64),  # ICO
        b"PK\x03\x04" + rng.randbytes(200),  # ZIP
    ]
    return rng.choice(choices)


def _kinds() -> list[Callable[[random.Random], Hostile]]:
    return [
        lambda rng: (b"\xff" + rng.randbytes(rng.randint(0, 300)), "event_not_json"),
        lambda rng: (b'{"event_id": "x", ' + rng.randbytes(20), "event_not_json"),
        lambda rng: (json.dumps([1, 2, 3]).encode(), "event_invalid"),
        lambda rng: (_event(rng, image_b64="AAAA", tenant_id="Not A Tenant"), "event_invalid"),
        lambda rng: (_event(rng, image_b64="AAAA", colour="red"), "event_invalid"),
        lambda rng: (
            _event(rng, image_b64="AAAA", image_url="https://example.com/a.png"),
            "event_invalid",
        ),
        lambda rng: (_event(rng), "event_invalid"),  # no image at all
        lambda rng: (
            _event(rng, image_b64="AAAA", metadata={f"k{i}": "v" for i in range(500)}),
            "event_invalid",
        ),
        lambda rng: (_event(rng, image_url="file:///etc/passwd"), "event_invalid"),
        lambda rng: (_event(rng, image_b64="not*base64!" * rng.randint(1, 9)), "invalid_base64"),
        lambda rng: (_event(rng, image_b64="QUJD="), "invalid_base64"),
        lambda rng: (_inline(rng, b""), "image_empty"),
        lambda rng: (
            _inline(rng, (png := _png(rng))[: rng.randint(40, len(png) // 2)]),
            "image_corrupt",
        ),
        lambda rng: (
            _inline(rng, (jpeg := _jpeg(rng))[: rng.randint(20, len(jpeg) // 2)]),
            "image_corrupt",
        ),
        lambda rng: (_inline(rng, b"\x89PNG\r\n\x1a\n" + rng.randbytes(100)), "image_corrupt"),
        lambda rng: (_inline(rng, _png_bomb(rng)), "image_too_many_pixels"),
        lambda rng: (_inline(rng, _gif_bomb(rng)), "image_too_many_pixels"),
        lambda rng: (_inline(rng, _webp_decode_bomb(rng)), "image_too_many_pixels"),
        lambda rng: (_inline(rng, _unsupported(rng)), "image_unsupported_format"),
        lambda rng: (
            _inline(rng, b"\xff\xd8\xff" + rng.randbytes(MAX_IMAGE_BYTES + rng.randint(1, 9999))),
            "image_too_large",
        ),
        lambda rng: (
            _event(
                rng,
                image_url=rng.choice(
                    [
                        "http://127.0.0.1/a.png",
                        "http://169.254.169.254/latest/meta-data/",
                        "http://10.0.0.7/x.jpg",
                        "http://[::1]:8080/x.png",
                        "http://192.168.1.1/router.png",
                        "http://localhost/x.png",
                    ]
                ),
            ),
            "image_url_blocked",
        ),
        lambda rng: (None, "event_empty"),
    ]


def _not_json(data: bytes) -> bool:
    try:
        json.loads(data)
    except ValueError:  # UnicodeDecodeError is a ValueError too
        return True
    return False


_JSON_SCALARS = st.none() | st.booleans() | st.integers() | st.text(max_size=20)


def _json_objects() -> st.SearchStrategy[Hostile]:
    # Any JSON object without an event_id breaks the contract, whatever else it holds.
    return st.dictionaries(
        st.text(max_size=12).filter(lambda key: key != "event_id"),
        st.recursive(
            _JSON_SCALARS,
            lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner),
            max_leaves=8,
        ),
        max_size=6,
    ).map(lambda body: (json.dumps(body).encode(), "event_invalid"))


def _garbage() -> st.SearchStrategy[Hostile]:
    return (
        st.binary(min_size=1, max_size=2000)
        .filter(_not_json)
        .map(lambda data: (data, "event_not_json"))
    )


def hostile_event() -> st.SearchStrategy[Hostile]:
    """One hostile event and the reason code it must be dead-lettered with."""
    crafted = st.builds(
        lambda kind, rng: kind(rng),
        st.sampled_from(_kinds()),
        st.randoms(use_true_random=True),
    )
    return st.one_of(crafted, _json_objects(), _garbage())


def _draw(strategy: st.SearchStrategy[Hostile], count: int, seed: int) -> list[Hostile]:
    drawn: list[Hostile] = []

    @hyp_seed(seed)
    @settings(
        max_examples=count,
        database=None,
        phases=[Phase.generate],
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(strategy)
    def collect(item: Hostile) -> None:
        drawn.append(item)

    collect()
    return drawn[:count]


def hostile_events(count: int, seed: int) -> list[Hostile]:
    """``count`` events drawn with hypothesis, reproducibly for a given seed.

    Every kind gets an equal share, so every reason code is covered; hypothesis supplies the
    bytes within each kind. Kinds are interleaved so a partial read still sees them all.
    """
    kinds = [
        # Kinds need kilobytes of random bytes: hypothesis draws the seed of a
        # random.Random, which keeps every example within its buffer.
        *(st.builds(kind, st.randoms(use_true_random=True)) for kind in _kinds()),
        _json_objects(),
        _garbage(),
    ]
    share = -(-count // len(kinds))
    per_kind = [_draw(strategy, share, seed + n) for n, strategy in enumerate(kinds)]
    interleaved = [item for group in zip(*per_kind, strict=False) for item in group]
    return interleaved[:count]
