"""JPEG decode to model input: the consumer's path against alternatives, on the same files.

    python -m bench.decode_compare [--megapixels 2 6 12] [--repeats 10] [--out FILE]

For photos of each size (bench.e2e.images), times per image, one thread:
- ``consumer``: what the consumer does now (consumer.imaging.decode.decode_image: Pillow draft
  mode, i.e. libjpeg's DCT-domain scaling, then a bilinear resize to 224 x 224);
- ``pillow_full``: Pillow without draft mode (full decode, then the same resize);
- ``simplejpeg``: libjpeg-turbo through simplejpeg, scaled in the DCT domain with fast DCT and
  fast upsampling, then the same Pillow resize.
Each alternative's pixels are compared with the consumer's, and so are the served backbone's
probabilities on them (onnxruntime on triton_repo's model.onnx), which is the bound that
matters: how far a cheaper decoder moves the scores. Measurement only: nothing is adopted here.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
import simplejpeg
from PIL import Image

from bench.clone import clone_root
from bench.e2e.images import generate_images
from consumer.errors import ConfigError
from consumer.imaging.decode import ImageLimits, decode_image
from consumer.runtime.settings import ImagingSettings

SIZE = 224
Decoder = Callable[[bytes], npt.NDArray[np.uint8]]


def _resize(image: Image.Image) -> npt.NDArray[np.uint8]:
    return np.asarray(image.resize((SIZE, SIZE), Image.Resampling.BILINEAR), dtype=np.uint8)


def decoders() -> dict[str, Decoder]:
    limits = ImageLimits.from_settings(ImagingSettings())

    def consumer(data: bytes) -> npt.NDArray[np.uint8]:
        return decode_image(data, SIZE, limits).pixels

    def pillow_full(data: bytes) -> npt.NDArray[np.uint8]:
        return _resize(Image.open(io.BytesIO(data)).convert("RGB"))

    def turbo(data: bytes) -> npt.NDArray[np.uint8]:
        pixels = simplejpeg.decode_jpeg(
            data, colorspace="RGB", fastdct=True, fastupsample=True, min_height=SIZE,
            min_width=SIZE,
        )  # fmt: skip
        return _resize(Image.fromarray(pixels))

    return {"consumer": consumer, "pillow_full": pillow_full, "simplejpeg": turbo}


def measure(megapixels: list[float], repeats: int) -> dict[str, object]:
    model = clone_root() / "triton_repo" / "nsfw_mobilenet_v2" / "1" / "model.onnx"
    if not model.is_file():
        raise ConfigError(f"{model} is missing: run ./scripts/setup.sh first")
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    found = decoders()
    rows = []
    for mp in megapixels:
        photos = generate_images(mp)
        for name, decode in found.items():
            times, pixel_diffs, prob_diffs = [], [], []
            for photo in photos:
                decode(photo.jpeg)  # warm-up
                started = time.perf_counter()
                for _ in range(repeats):
                    pixels = decode(photo.jpeg)
                times.append((time.perf_counter() - started) / repeats)
                reference = found["consumer"](photo.jpeg)
                pixel_diffs.append(float(np.abs(pixels.astype(int) - reference).mean()))
                probs = session.run(None, {input_name: np.stack([pixels, reference])})[0]
                prob_diffs.append(float(np.abs(probs[0] - probs[1]).max()))
            rows.append(
                {
                    "megapixels": mp,
                    "decoder": name,
                    "ms_per_image": round(1000 * float(np.mean(times)), 2),
                    "mean_abs_pixel_diff_vs_consumer": round(float(np.mean(pixel_diffs)), 3),
                    "max_abs_prob_diff_vs_consumer": round(max(prob_diffs), 5),
                    "photos": len(photos),
                }
            )
    return {"threads": 1, "repeats": repeats, "size": SIZE, "rows": rows}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.decode_compare", description=__doc__)
    parser.add_argument("--megapixels", type=float, nargs="+", default=[2.0, 6.0, 12.0])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    try:
        out = args.out or clone_root() / "bench" / "results" / "decode_compare.json"
        report = measure(args.megapixels, args.repeats)
    except ConfigError as exc:
        sys.stderr.write(f"decode_compare: {exc}\n")
        return 2
    out.write_text(json.dumps(report, indent=2) + "\n")
    for row in report["rows"]:  # type: ignore[attr-defined]
        sys.stdout.write(
            f"{row['megapixels']:>5} MP  {row['decoder']:<12} {row['ms_per_image']:>8} ms  "
            f"pixels ±{row['mean_abs_pixel_diff_vs_consumer']:<6} "
            f"probs ±{row['max_abs_prob_diff_vs_consumer']}\n"
        )
    sys.stdout.write(f"wrote {out}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
