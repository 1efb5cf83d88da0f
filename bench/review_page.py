"""What one review item costs the page's CPU: the image shown, and a heat map on demand.

    python -m bench.review_page [--megapixels 2 6 12] [--repeats 7] [--out FILE]

For photos of each size (bench.e2e.images), median milliseconds on one thread of:
- ``prepare``: the consumer's checks and decode to the model's input, and the displayed
  picture (draft decode, EXIF orientation, thumbnail to 1024 px) — paid by every image request;
- ``display_jpeg``: re-encoding that picture for the browser;
- ``heat_<category>``: Grad-CAM of a built-in category and of a head (ONNX Runtime on the
  served backbone, the gradient in numpy) and its overlay, as JPEG.
The heat map is computed only when a reviewer asks for it.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

from bench.clone import clone_root
from bench.e2e.images import generate_images
from consumer.imaging.decode import ImageLimits
from consumer.review.render import display_jpeg, prepare, saliency_jpeg
from consumer.review.saliency import SaliencyModel

logger = logging.getLogger(__name__)

DISPLAY_MAX_SIDE = 1024
CATEGORIES = (("suggestive", None), ("qr_solicitation", "1"))


def _median_ms(work: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return round(statistics.median(times) * 1000, 2)


def measure(repository: Path, megapixels: list[float], repeats: int) -> dict[str, object]:
    model = SaliencyModel.load(repository, "moderation")
    limits = ImageLimits(max_bytes=64 << 20, max_pixels=64_000_000)
    rows = []
    for size in megapixels:
        row = {"megapixels": size, **_costs(generate_images(size)[0].jpeg, model, limits, repeats)}
        rows.append(row)
        logger.info("%s", row)
    return {"repeats": repeats, "display_max_side": DISPLAY_MAX_SIDE, "rows": rows}


def _costs(
    data: bytes, model: SaliencyModel, limits: ImageLimits, repeats: int
) -> dict[str, object]:
    shown = prepare(data, limits, DISPLAY_MAX_SIDE)
    costs: dict[str, object] = {
        "bytes": len(data),
        "prepare_ms": _median_ms(lambda: prepare(data, limits, DISPLAY_MAX_SIDE), repeats),
        "display_jpeg_ms": _median_ms(lambda: display_jpeg(shown), repeats),
    }
    for category, heads_version in CATEGORIES:
        heat = functools.partial(saliency_jpeg, shown, model, category, heads_version)
        costs[f"heat_{category}_ms"] = _median_ms(heat, repeats)
    return costs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.review_page", description=__doc__)
    parser.add_argument("--megapixels", type=float, nargs="+", default=[2.0, 6.0, 12.0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", force=True)
    root = clone_root()
    result = measure(root / "triton_repo", args.megapixels, args.repeats)
    out = args.out or root / "bench" / "results" / "review_page.json"
    out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    sys.stdout.write(f"wrote {out}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
