"""Stand-in images for the categories a moderation demo or test needs but must not ship.

    python -m training.standins [--out bench/samples/standins]

The repository carries no explicit content, yet a demo or an end-to-end test of routing needs
events the model scores as ``sexual_explicit`` or ``suggestive``. Each stand-in is a benign
scikit-image photo with a small targeted adversarial perturbation (projected gradient descent,
L∞ ≤ 8/255) that drives the nsfwjs MobileNetV2 to a chosen score band for one class. To a
person the picture is unchanged; to that one model it is explicit.

They are valid only for ``nsfw_mobilenet_v2`` at 224x224, sent losslessly (PNG, no resize):
another model, a resize or a JPEG re-encode scores them differently. They also show a real
blind spot of any single classifier, which the prototype check and exemplar banks address.
Each file's scores are recorded in ``manifest.json`` next to it.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch
from PIL import Image

from bench.samples import STANDINS_DIR, photo_image
from training.nsfwjs import load
from training.nsfwjs.errors import ImportFailed
from training.nsfwjs.models import CATEGORIES, NsfwModel

logger = logging.getLogger(__name__)

MODEL = "mobilenet_v2"
SIZE = 224
EPSILON = 8 / 255
STEP = 0.5 / 255
MAX_STEPS = 100
DEFAULT_OUT = STANDINS_DIR


@dataclass(frozen=True)
class Target:
    """A stand-in to make: ``photo`` pushed until ``category`` scores within [low, high]."""

    name: str
    photo: str
    category: str
    low: float
    high: float


# Bands chosen to land on both sides of the shipped policy's thresholds (policies/default.yaml).
TARGETS: tuple[Target, ...] = (
    Target("explicit-high", "astronaut", "sexual_explicit", 0.95, 1.0),
    Target("explicit-mid", "coffee", "sexual_explicit", 0.50, 0.65),
    Target("explicit-low", "coffee", "sexual_explicit", 0.12, 0.35),
    Target("drawn-high", "rocket", "sexual_explicit_drawn", 0.95, 1.0),
    Target("drawn-mid", "astronaut", "sexual_explicit_drawn", 0.45, 0.65),
    Target("suggestive-high", "chelsea", "suggestive", 0.85, 1.0),
    Target("suggestive-mid", "coffee", "suggestive", 0.65, 0.80),
    Target("suggestive-low", "astronaut", "suggestive", 0.25, 0.45),
)


@dataclass(frozen=True)
class Made:
    file: str
    photo: str
    category: str
    band: tuple[float, float]
    steps: int
    linf: int
    scores: dict[str, float]


def photo(name: str) -> npt.NDArray[np.uint8]:
    """A scikit-image sample photo as RGB uint8, stretched to the model's input size."""
    rgb = photo_image(name)
    return np.asarray(rgb.resize((SIZE, SIZE), Image.Resampling.BILINEAR), dtype=np.uint8)


def scores_of(model: NsfwModel, pixels: npt.NDArray[np.uint8]) -> dict[str, float]:
    with torch.no_grad():
        probs, _ = model.uint8_input()(torch.from_numpy(pixels.copy())[None])
    return {
        CATEGORIES[name]: float(p)
        for name, p in zip(model.cfg.class_names, probs[0].tolist(), strict=True)
    }


def perturb(model: NsfwModel, target: Target) -> tuple[npt.NDArray[np.uint8], int]:
    """Targeted PGD to a confident image, then paste part of it on the photo to hit the band."""
    index = [CATEGORIES[name] for name in model.cfg.class_names].index(target.category)
    start = photo(target.photo)
    original = torch.from_numpy(start.astype(np.float32) / 255)[None]
    image = original.clone()
    steps = 0
    while steps < MAX_STEPS:
        steps += 1
        image.requires_grad_(True)
        probs, _ = model(image)
        if float(probs.detach()[0, index]) >= max(target.high, 0.999):
            break
        loss = -torch.log(probs[0, index] + 1e-12)
        (gradient,) = torch.autograd.grad(loss, image)
        stepped = image.detach() - STEP * gradient.sign()
        image = torch.clamp(
            torch.minimum(torch.maximum(stepped, original - EPSILON), original + EPSILON), 0, 1
        )
    adversarial = np.clip(np.round(image.detach()[0].numpy() * 255), 0, 255).astype(np.uint8)
    # Switch pixels from the photo to the adversarial image one at a time, in a fixed random
    # order: each switch moves the score a little, so bisecting the count lands in the band.
    order = np.random.default_rng(0).permutation(SIZE * SIZE)
    flat_start, flat_adversarial = start.reshape(-1, 3), adversarial.reshape(-1, 3)
    low, high = 0, SIZE * SIZE
    score = 0.0
    while low <= high:
        count = (low + high) // 2
        blended = flat_start.copy()
        blended[order[:count]] = flat_adversarial[order[:count]]
        pixels = blended.reshape(SIZE, SIZE, 3)
        score = scores_of(model, pixels)[target.category]
        if target.low <= score <= target.high:
            return pixels, steps
        if score < target.low:
            low = count + 1
        else:
            high = count - 1
    raise ImportFailed(
        f"stand-in {target.name!r}: {target.category} did not land in "
        f"[{target.low}, {target.high}] (last {score:.3f}); widen the band"
    )


def make_all(model: NsfwModel, out: Path) -> list[Made]:
    out.mkdir(parents=True, exist_ok=True)
    made: list[Made] = []
    for target in TARGETS:
        pixels, steps = perturb(model, target)
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="PNG", optimize=True)
        file = f"{target.name}.png"
        (out / file).write_bytes(buffer.getvalue())
        linf = int(np.max(np.abs(pixels.astype(np.int16) - photo(target.photo).astype(np.int16))))
        scores = {k: round(v, 6) for k, v in scores_of(model, pixels).items()}
        made.append(
            Made(
                file, target.photo, target.category, (target.low, target.high), steps, linf, scores
            )
        )
        logger.info(
            "%s: %s %.3f after %d steps", file, target.category, scores[target.category], steps
        )
    manifest = {
        "model": f"nsfw_{MODEL}",
        "size": SIZE,
        "epsilon_255": round(EPSILON * 255),
        "standins": [asdict(m) for m in made],
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return made


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.standins", description=__doc__)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    torch.manual_seed(0)
    try:
        model = load(MODEL).eval()
        for parameter in model.parameters():
            parameter.requires_grad_(False)
        make_all(model, args.out)
    except ImportFailed as exc:
        sys.stderr.write(f"stand-ins failed: {exc}\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
