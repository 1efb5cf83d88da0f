"""Fetch the pinned nsfwjs tarball, import its networks, and optionally classify images.

    python -m training.nsfwjs [--cache-dir DIR] [--model NAME ...] [IMAGE ...]

Writes one JSON line per (image, model) to stdout; timings and progress go to the log.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from training.nsfwjs.archive import NsfwjsArchive, default_cache_dir, fetch_tarball
from training.nsfwjs.errors import ImportFailed
from training.nsfwjs.models import MODELS, load, preprocess

logger = logging.getLogger("training.nsfwjs")


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m training.nsfwjs", description=__doc__)
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=default_cache_dir(),
        help="where the nsfwjs tarball is cached (default: %(default)s)",
    )
    parser.add_argument(
        "--model",
        action="append",
        choices=sorted(MODELS),
        help="model to import (repeatable; default: all three)",
    )
    parser.add_argument("images", nargs="*", type=Path, help="images to classify")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        archive = NsfwjsArchive.open(fetch_tarball(args.cache_dir))
        for name in args.model or list(MODELS):
            model = load(name, archive=archive)
            for path in args.images:
                with Image.open(path) as image:
                    pixels = torch.from_numpy(np.asarray(image.convert("RGB")).copy())
                with torch.no_grad():
                    probs, _ = model(preprocess(pixels, model.cfg))
                scores = dict(zip(model.cfg.class_names, probs[0].tolist(), strict=True))
                line = {"image": str(path), "model": name, "probs": scores}
                sys.stdout.write(json.dumps(line) + "\n")
    except ImportFailed as exc:
        logger.error("%s", exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
