"""Measured: the memory one decode takes stays within ``decode_memory_bytes``, for every kind of
frame buffer the decoders use.

Each image is decoded in a fresh interpreter, whose peak resident memory (VmHWM, reset just
before the decode) is the measurement: Pillow's buffers live outside Python's allocator, where
tracemalloc cannot see them. The memory model (docs/memory.md) rests on this bound.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.support.paths import REPO_ROOT

WIDTH, HEIGHT = 4000, 3000
PIXELS = WIDTH * HEIGHT
MiB = 1024 * 1024

# Imports once, then forks a fresh process per image: the measurement starts from the same
# resident set each time, with nothing freed by an earlier decode to reuse.
_CHILD = """
import io, json, os, sys
from PIL import Image

from tests.support.paths import REPO_ROOT
from consumer.imaging.decode import ImageLimits, decode_image, decode_memory_bytes, sample_indices

def status(key):
    with open("/proc/self/status") as lines:
        for line in lines:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024

def measure(path):
    data = open(path, "rb").read()
    with Image.open(io.BytesIO(data)) as image:
        if image.format == "JPEG":
            image.draft("RGB", (224, 224))
        animated = sample_indices(getattr(image, "n_frames", 1), 4) != [0]
        estimate = decode_memory_bytes(image, image.format, animated=animated, data=len(data))
    limits = ImageLimits(max_bytes=len(data), max_pixels=10**9, max_decode_bytes=2**40)
    before = status("VmRSS")
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")  # resets VmHWM to the current resident size
    decode_image(data, 224, limits)
    return {"peak": status("VmHWM") - before, "estimate": estimate}

for path in sys.argv[1:]:
    sys.stdout.flush()
    pid = os.fork()
    if pid == 0:
        print(json.dumps(measure(path)), flush=True)
        os._exit(0)
    _, code = os.waitpid(pid, 0)
    if code:
        sys.exit(f"measuring {path} failed")
"""


def _flat(mode: str, value: object) -> Image.Image:
    return Image.new(mode, (WIDTH, HEIGHT), value)  # type: ignore[arg-type]


def _palette_with_transparency(path: Path) -> None:
    image = _flat("P", 1)
    image.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    image.save(path, "PNG", transparency=0)


def _animation(fmt: str, mode: str) -> Callable[[Path], None]:
    def write(path: Path) -> None:
        frames = [_flat(mode, (i * 40, 0, 0, 255)[: len(mode)]) for i in range(4)]
        options = {"lossless": True} if fmt == "WEBP" else {}
        frames[0].save(path, fmt, save_all=True, append_images=frames[1:], **options)

    return write


CASES: dict[str, Callable[[Path], None]] = {
    "png-rgb": lambda p: _flat("RGB", (10, 200, 30)).save(p, "PNG"),
    "png-rgba": lambda p: _flat("RGBA", (10, 200, 30, 100)).save(p, "PNG"),
    "png-gray-alpha": lambda p: _flat("LA", (10, 100)).save(p, "PNG"),
    "png-palette-transparent": _palette_with_transparency,
    "png-16-bit": lambda p: _flat("I;16", 30_000).save(p, "PNG"),
    "tiff-float": lambda p: Image.fromarray(np.full((HEIGHT, WIDTH), 3.5, np.float32)).save(
        p, "TIFF", compression="tiff_deflate"
    ),
    "tiff-cmyk": lambda p: _flat("CMYK", (10, 200, 30, 0)).save(
        p, "TIFF", compression="tiff_deflate"
    ),
    "jpeg": lambda p: _flat("RGB", (10, 200, 30)).save(p, "JPEG"),
    "webp": lambda p: _flat("RGB", (10, 200, 30)).save(p, "WEBP", lossless=True),
    "gif-animated": _animation("GIF", "L"),
    "apng": _animation("PNG", "RGBA"),
}
# Still images other than WebP hold one frame buffer of at most 4 bytes a pixel, and a bounded
# amount for the tiles converted at a time (before, converting to RGB or 8-bit copied whole
# frames: 8 bytes a pixel for RGBA, 36 for 16-bit PNGs, 40 for float TIFFs).
FRAME_BUFFER_BYTES_PER_PIXEL = 4
TILES_BYTES = 48 * MiB


def _measure(paths: list[Path]) -> list[dict[str, int]]:
    result = subprocess.run(
        [sys.executable, "-c", _CHILD, *map(str, paths)],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
        cwd=REPO_ROOT,
    )
    return [json.loads(line) for line in result.stdout.splitlines()]


@pytest.fixture(scope="module")
def measured(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, int]]:
    folder = tmp_path_factory.mktemp("decode-memory")
    paths = {name: folder / f"{name}.img" for name in CASES}
    for name, write in CASES.items():
        write(paths[name])
    results = dict(zip(paths, _measure(list(paths.values())), strict=True))
    sys.stderr.write(
        "\ndecode peak, bytes per pixel: "
        + ", ".join(f"{name} {r['peak'] / PIXELS:.2f}" for name, r in results.items())
        + "\n"
    )
    return results


@pytest.mark.parametrize("name", CASES)
def test_decode_peak_is_within_the_estimate(measured: dict[str, dict[str, int]], name: str) -> None:
    peak, estimate = measured[name]["peak"], measured[name]["estimate"]
    assert peak <= estimate, f"{name}: {peak / MiB:.0f} MiB > estimated {estimate / MiB:.0f} MiB"


@pytest.mark.parametrize("name", [n for n in CASES if n not in ("webp", "gif-animated", "apng")])
def test_still_images_hold_one_frame_buffer(measured: dict[str, dict[str, int]], name: str) -> None:
    assert measured[name]["peak"] <= FRAME_BUFFER_BYTES_PER_PIXEL * PIXELS + TILES_BYTES
