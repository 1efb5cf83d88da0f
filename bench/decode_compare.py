"""JPEG decode to model input: the consumer's path against alternatives, on the same files.

    python -m bench.decode_compare [--megapixels 2 6 12] [--repeats 10] [--out FILE]
        [--pillow-simd-python PATH]

For photos of each size (bench.e2e.images), times per image, one thread:
- ``consumer``: what the consumer does now (consumer.imaging.decode.decode_image: Pillow draft
  mode, i.e. libjpeg's DCT-domain scaling, then a bilinear resize to 224 x 224);
- ``pillow_full``: Pillow without draft mode (full decode, then the same resize);
- ``simplejpeg``: libjpeg-turbo through simplejpeg, scaled in the DCT domain with fast DCT and
  fast upsampling, then the same Pillow resize;
- ``pyturbojpeg``: the system's libturbojpeg through PyTurboJPEG, ``scaling_factor`` to the
  smallest output that still covers 224 x 224, TJFLAG_FASTDCT | TJFLAG_FASTUPSAMPLE, then the
  same Pillow resize;
- ``pillow_simd``: the consumer's path itself under pillow-simd, which replaces Pillow and so
  runs in an interpreter of its own (``--pillow-simd-python``, see bench.decode_libs).
The last three are optional: one that cannot be loaded is listed under ``unavailable`` in the
JSON with the reason. Each alternative's pixels are compared with the consumer's, and so are
the served backbone's probabilities on them (onnxruntime on triton_repo's model.onnx), which
is the bound that matters: how far a cheaper decoder moves the scores. Measurement only:
nothing is adopted here.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import onnxruntime as ort
import PIL
from PIL import Image

from bench.clone import clone_root
from bench.decode_libs import (
    Decoder,
    Pixels,
    Unavailable,
    WorkerResult,
    load_optional,
    resize,
    run_pillow_simd,
)
from bench.e2e.images import generate_images
from consumer.errors import ConfigError
from consumer.imaging.decode import ImageLimits, decode_image
from consumer.runtime.settings import ImagingSettings

logger = logging.getLogger(__name__)

SIZE = 224
Row = dict[str, float | int | str]


def decoders() -> tuple[dict[str, Decoder], dict[str, dict[str, str]], list[Unavailable]]:
    """Every decoder measurable in this interpreter, what each is, and the optional ones that
    could not be loaded."""
    limits = ImageLimits.from_settings(ImagingSettings())

    def consumer(data: bytes) -> Pixels:
        return decode_image(data, SIZE, limits).pixels

    def pillow_full(data: bytes) -> Pixels:
        return resize(Image.open(io.BytesIO(data)).convert("RGB"), SIZE)

    optional = load_optional(SIZE)
    found: dict[str, Decoder] = {"consumer": consumer, "pillow_full": pillow_full}
    about = {
        "consumer": {
            "what": "consumer.imaging.decode.decode_image: Pillow draft mode, bilinear resize",
            "version": f"Pillow {PIL.__version__}",
        },
        "pillow_full": {
            "what": "Pillow full decode (no draft), same resize",
            "version": f"Pillow {PIL.__version__}",
        },
    }
    return found | optional.decoders, about | optional.about, optional.unavailable


def _time(decode: Decoder, jpeg: bytes, repeats: int) -> tuple[float, Pixels]:
    decode(jpeg)  # warm-up
    started = time.perf_counter()
    for _ in range(repeats):
        pixels = decode(jpeg)
    return (time.perf_counter() - started) / repeats, pixels


class _Scorer:
    """The served backbone on onnxruntime, one thread."""

    def __init__(self) -> None:
        model = clone_root() / "triton_repo" / "nsfw_mobilenet_v2" / "1" / "model.onnx"
        if not model.is_file():
            raise ConfigError(f"{model} is missing: run ./scripts/setup.sh first")
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        self.session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    def max_prob_diff(self, pixels: Pixels, reference: Pixels) -> float:
        probs = self.session.run(None, {self.input_name: np.stack([pixels, reference])})[0]
        return float(np.abs(probs[0] - probs[1]).max())


def _row(
    mp: float,
    name: str,
    seconds: list[float],
    pixels: list[Pixels],
    references: list[Pixels],
    scorer: _Scorer,
) -> Row:
    diffs = [np.abs(p.astype(np.int16) - r) for p, r in zip(pixels, references, strict=True)]
    prob_diffs = [scorer.max_prob_diff(p, r) for p, r in zip(pixels, references, strict=True)]
    return {
        "megapixels": mp,
        "decoder": name,
        "ms_per_image": round(1000 * float(np.mean(seconds)), 2),
        "mean_abs_pixel_diff_vs_consumer": round(float(np.mean([d.mean() for d in diffs])), 3),
        "max_abs_pixel_diff_vs_consumer": int(max(int(d.max()) for d in diffs)),
        "max_abs_prob_diff_vs_consumer": round(max(prob_diffs), 5),
        "photos": len(pixels),
    }


def measure(
    megapixels: list[float], repeats: int, pillow_simd: Path | None = None
) -> dict[str, object]:
    """Time every decoder on photos of each size; see the module docstring."""
    scorer = _Scorer()
    found, about, unavailable = decoders()
    if pillow_simd is None:
        unavailable.append(
            Unavailable(
                "pillow_simd",
                "not measured: no --pillow-simd-python given (pillow-simd replaces Pillow, "
                "so it runs in an interpreter of its own)",
            )
        )
    rows: list[Row] = []
    for mp in megapixels:
        photos = generate_images(mp)
        references = [found["consumer"](photo.jpeg) for photo in photos]
        for name, decode in found.items():
            logger.info("%s MP: %s", mp, name)
            timed = [_time(decode, photo.jpeg, repeats) for photo in photos]
            seconds, pixels = [t for t, _ in timed], [p for _, p in timed]
            rows.append(_row(mp, name, seconds, pixels, references, scorer))
        if pillow_simd is not None:
            logger.info("%s MP: pillow_simd in %s", mp, pillow_simd)
            jpegs = [photo.jpeg for photo in photos]
            result = run_pillow_simd(pillow_simd, jpegs, repeats, SIZE, clone_root())
            if isinstance(result, WorkerResult):
                about["pillow_simd"] = result.about
                row = _row(mp, "pillow_simd", result.seconds, result.pixels, references, scorer)
                rows.append(row)
            else:
                logger.warning("pillow_simd unavailable: %s", result.reason)
                unavailable.append(result)
                pillow_simd = None
    consumer_ms = {
        row["megapixels"]: row["ms_per_image"] for row in rows if row["decoder"] == "consumer"
    }
    for row in rows:
        row["ratio_to_consumer"] = round(
            float(row["ms_per_image"]) / float(consumer_ms[row["megapixels"]]), 3
        )
    return {
        "threads": 1,
        "repeats": repeats,
        "size": SIZE,
        "decoders": about,
        "unavailable": [asdict(u) for u in unavailable],
        "rows": rows,
    }


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    parser = argparse.ArgumentParser(prog="python -m bench.decode_compare", description=__doc__)
    parser.add_argument("--megapixels", type=float, nargs="+", default=[2.0, 6.0, 12.0])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--out", type=Path)
    parser.add_argument(
        "--pillow-simd-python",
        type=Path,
        help="a Python 3.11 interpreter whose environment holds pillow-simd",
    )
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    try:
        out = args.out or clone_root() / "bench" / "results" / "decode_compare.json"
        report = measure(args.megapixels, args.repeats, args.pillow_simd_python)
    except ConfigError as exc:
        sys.stderr.write(f"decode_compare: {exc}\n")
        return 2
    out.write_text(json.dumps(report, indent=2) + "\n")
    for row in report["rows"]:  # type: ignore[attr-defined]
        sys.stdout.write(
            f"{row['megapixels']:>5} MP  {row['decoder']:<12} {row['ms_per_image']:>8} ms  "
            f"x{row['ratio_to_consumer']:<6} "
            f"pixels ±{row['mean_abs_pixel_diff_vs_consumer']:<6} "
            f"(max {row['max_abs_pixel_diff_vs_consumer']:>3}) "
            f"probs ±{row['max_abs_prob_diff_vs_consumer']}\n"
        )
    for gone in report["unavailable"]:  # type: ignore[attr-defined]
        sys.stdout.write(f"unavailable: {gone['decoder']}: {gone['reason']}\n")
    sys.stdout.write(f"wrote {out}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
