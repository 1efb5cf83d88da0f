"""The optional decoders of bench.decode_compare, each loaded only if it can be.

- ``simplejpeg`` and ``pyturbojpeg`` (PyTurboJPEG over the system's libturbojpeg) run in the
  benchmark's own interpreter; either may be missing, and then it is reported as unavailable
  with the reason, never skipped silently.
- ``pillow_simd`` replaces Pillow, so it cannot share an interpreter with stock Pillow: it runs
  the consumer's own path (consumer.imaging.decode.decode_image) in another interpreter whose
  environment holds pillow-simd, e.g. one made outside the project's venv with::

      python3.11 -m venv /tmp/pillow-simd-venv
      CC="cc -mavx2" /tmp/pillow-simd-venv/bin/pip install pillow-simd

  That interpreter finds everything else (numpy, the consumer) in this interpreter's
  site-packages, added after its own, so ``PIL`` there is pillow-simd.
"""

from __future__ import annotations

import ctypes.util
import importlib
import importlib.metadata
import json
import logging
import math
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt
from PIL import Image

logger = logging.getLogger(__name__)

Pixels = npt.NDArray[np.uint8]
Decoder = Callable[[bytes], Pixels]

# How long the pillow-simd interpreter may take for one size (all photos, all repeats).
WORKER_TIMEOUT_S = 900.0


@dataclass(frozen=True)
class Unavailable:
    """An optional decoder that could not be measured, and why."""

    decoder: str
    reason: str


@dataclass(frozen=True)
class Loaded:
    """Optional decoders that loaded, what they are, and those that did not."""

    decoders: dict[str, Decoder] = field(default_factory=dict)
    about: dict[str, dict[str, str]] = field(default_factory=dict)
    unavailable: list[Unavailable] = field(default_factory=list)


def resize(image: Image.Image, size: int) -> Pixels:
    """The consumer's stretch to ``size`` x ``size`` (bilinear, aspect ratio not kept)."""
    return np.asarray(image.resize((size, size), Image.Resampling.BILINEAR), dtype=np.uint8)


def load_optional(size: int) -> Loaded:
    """simplejpeg and PyTurboJPEG decoders scaling to at least ``size``, where importable."""
    loaded = Loaded()
    loaders: dict[str, Callable[[int], tuple[Decoder, dict[str, str]]]] = {
        "simplejpeg": _simplejpeg,
        "pyturbojpeg": _pyturbojpeg,
    }
    for name, load in loaders.items():
        try:
            decode, about = load(size)
        except (ImportError, OSError, RuntimeError, AttributeError) as exc:
            # ImportError: not installed; OSError/RuntimeError: its shared library is missing
            # or of a version it refuses; AttributeError: an API other than the one used here.
            reason = f"{type(exc).__name__}: {exc}".replace("\n", " ").strip()
            logger.warning("%s unavailable: %s", name, reason)
            loaded.unavailable.append(Unavailable(name, reason))
        else:
            loaded.decoders[name] = decode
            loaded.about[name] = about
    return loaded


def _simplejpeg(size: int) -> tuple[Decoder, dict[str, str]]:
    simplejpeg = importlib.import_module("simplejpeg")

    def decode(data: bytes) -> Pixels:
        pixels = simplejpeg.decode_jpeg(
            data, colorspace="RGB", fastdct=True, fastupsample=True, min_height=size,
            min_width=size,
        )  # fmt: skip
        return resize(Image.fromarray(pixels), size)

    about = {
        "what": "libjpeg-turbo (bundled) via simplejpeg: DCT-domain scaling to >= the model "
        "size, fastdct, fastupsample; then the same Pillow resize",
        "version": importlib.metadata.version("simplejpeg"),
    }
    return decode, about


def _pyturbojpeg(size: int) -> tuple[Decoder, dict[str, str]]:
    turbojpeg = importlib.import_module("turbojpeg")
    jpeg = turbojpeg.TurboJPEG()
    # Smallest scale first: the first that keeps both sides >= size is the cheapest decode.
    factors: list[tuple[int, int]] = sorted(jpeg.scaling_factors, key=lambda f: f[0] / f[1])
    flags = turbojpeg.TJFLAG_FASTDCT | turbojpeg.TJFLAG_FASTUPSAMPLE
    rgb = turbojpeg.TJPF_RGB

    def decode(data: bytes) -> Pixels:
        width, height, _, _ = jpeg.decode_header(data)
        factor = next(
            (
                (num, denom)
                for num, denom in factors
                # libjpeg-turbo's TJSCALED: the scaled side is rounded up.
                if math.ceil(width * num / denom) >= size
                and math.ceil(height * num / denom) >= size
            ),
            (1, 1),
        )
        pixels = jpeg.decode(data, pixel_format=rgb, scaling_factor=factor, flags=flags)
        return resize(Image.fromarray(pixels), size)

    about = {
        "what": "libturbojpeg (system) via PyTurboJPEG: scaling_factor to >= the model size, "
        "TJFLAG_FASTDCT | TJFLAG_FASTUPSAMPLE; then the same Pillow resize",
        "version": importlib.metadata.version("PyTurboJPEG"),
        "library": ctypes.util.find_library("turbojpeg") or "found by PyTurboJPEG's own search",
    }
    return decode, about


@dataclass(frozen=True)
class WorkerResult:
    """The consumer's path timed in the pillow-simd interpreter, per photo."""

    seconds: list[float]
    pixels: list[Pixels]
    about: dict[str, str]


# Run by the pillow-simd interpreter: this interpreter's site-packages go after its own.
_BOOT = (
    "import site, sys; site.addsitedir(sys.argv[1]); "
    "from bench.decode_libs import pillow_worker; sys.exit(pillow_worker(sys.argv[2:]))"
)


def run_pillow_simd(
    python: Path, photos: Sequence[bytes], repeats: int, size: int, cwd: Path
) -> WorkerResult | Unavailable:
    """Time the consumer's path on ``photos`` in ``python`` (an interpreter with pillow-simd)."""
    if not python.is_file():
        return Unavailable("pillow_simd", f"no interpreter at {python}")
    with tempfile.TemporaryDirectory(prefix="decode-compare-") as tmp:
        folder = Path(tmp)
        for index, jpeg in enumerate(photos):
            (folder / f"{index}.jpg").write_bytes(jpeg)
        command = [str(python), "-c", _BOOT, sysconfig.get_paths()["purelib"], str(folder)]
        command += [str(len(photos)), str(repeats), str(size)]
        try:
            done = subprocess.run(
                command, cwd=cwd, capture_output=True, text=True, timeout=WORKER_TIMEOUT_S
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            return Unavailable("pillow_simd", f"{python} did not run: {exc}")
        if done.returncode != 0:
            tail = " ".join(done.stderr.strip().splitlines()[-3:])
            return Unavailable("pillow_simd", f"{python} exited {done.returncode}: {tail}")
        report = json.loads((folder / "times.json").read_text())
        with np.load(folder / "pixels.npz") as stored:
            pixels = [np.asarray(stored[str(i)], dtype=np.uint8) for i in range(len(photos))]
    return WorkerResult(
        seconds=[float(s) for s in report["seconds"]], pixels=pixels, about=report["about"]
    )


def pillow_worker(argv: list[str]) -> int:
    """In the pillow-simd interpreter: time decode_image on the photos in a folder.

    ``argv``: folder, number of photos, repeats, size. Writes ``times.json`` (seconds per
    image, per photo, and what was loaded) and ``pixels.npz`` into the folder.
    """
    import PIL
    from PIL import features

    from consumer.imaging.decode import ImageLimits, decode_image
    from consumer.runtime.settings import ImagingSettings

    folder, count, repeats, size = Path(argv[0]), int(argv[1]), int(argv[2]), int(argv[3])
    try:
        simd = importlib.metadata.version("pillow-simd")
    except importlib.metadata.PackageNotFoundError:
        sys.stderr.write("pillow-simd is not installed in this interpreter\n")
        return 3
    if PIL.__version__ != simd:
        sys.stderr.write(f"PIL {PIL.__version__} from {PIL.__file__} is not pillow-simd {simd}\n")
        return 3
    limits = ImageLimits.from_settings(ImagingSettings())
    seconds, pixels = [], {}
    for index in range(count):
        jpeg = (folder / f"{index}.jpg").read_bytes()
        decode_image(jpeg, size, limits)  # warm-up
        started = time.perf_counter()
        for _ in range(repeats):
            decoded = decode_image(jpeg, size, limits)
        seconds.append((time.perf_counter() - started) / repeats)
        pixels[str(index)] = decoded.pixels
    about = {
        "what": "the consumer's path (decode_image: draft mode, same resize) under pillow-simd, "
        "in its own interpreter",
        "version": simd,
        "libjpeg_turbo": str(features.version("libjpeg_turbo")),
    }
    (folder / "times.json").write_text(json.dumps({"seconds": seconds, "about": about}))
    np.savez(folder / "pixels.npz", **pixels)
    return 0
