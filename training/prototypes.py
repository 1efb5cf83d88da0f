"""Category prototypes: the mean embedding of labelled examples of each category.

A label the model gives is trusted only when the image's embedding is close enough to the
prototype of that label (policy ``prototype_check``); the export bakes the prototypes into
the graph, so they always match the model version that serves them.

    python -m training.prototypes [--model mobilenet_v2] [--labelled DIR] [--json FILE]

prints, per category, how similar held-out labelled images are to the prototype of the
others (leave one source image out) next to images the model was never meant to see, which
is what a ``prototype_check`` threshold is chosen from. ``DIR`` holds one folder per category
(``DIR/safe/*.jpg``, ``DIR/safe_drawing/*.png``); without it, the built-in set is used:
scikit-image's photos as ``safe`` and synthetic clip-art as ``safe_drawing``. No explicit
images ship with the project, so explicit categories get a prototype only from a labelled
folder of your own.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import random
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from PIL import Image, ImageDraw

from bench.samples import photo_image
from consumer.banks.store import unit
from consumer.errors import EventRejected
from consumer.imaging.decode import ImageLimits, decode_image
from training.nsfwjs.errors import ImportFailed
from training.nsfwjs.models import CATEGORIES, CLASS_NAMES, MODELS, NsfwModel, load

logger = logging.getLogger(__name__)

# The moderation categories, in the order of the nsfwjs classes.
CATEGORY_ORDER = tuple(CATEGORIES[name] for name in CLASS_NAMES)
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp"}

# scikit-image photos in the built-in ``safe`` set. chelsea and coffee are left out on purpose:
# tests and the model card use them as photos the prototypes have not seen.
BUILTIN_PHOTOS = (
    "astronaut",
    "camera",
    "rocket",
    "brick",
    "grass",
    "gravel",
    "clock",
    "coins",
    "moon",
    "hubble_deep_field",
    "retina",
    "immunohistochemistry",
    "cell",
    "horse",
)
HELD_OUT_PHOTOS = ("chelsea", "coffee")
BUILTIN_DRAWINGS = 48
# Clip-art seeds from here on are never in the built-in set.
HELD_OUT_DRAWING_SEED = 10_000
_LIMITS = ImageLimits(max_bytes=64 * 1024 * 1024, max_pixels=64_000_000)


@dataclass(frozen=True)
class LabelledImage:
    category: str
    source: str
    """Where it came from (file or generator); augmented copies share it."""
    data: bytes


@dataclass(frozen=True)
class Prototypes:
    """One unit-length row per category in model output order; NaN rows have no examples."""

    matrix: npt.NDArray[np.float32]
    counts: dict[str, int]
    source: str

    @property
    def categories(self) -> tuple[str, ...]:
        return tuple(name for name in CATEGORY_ORDER if self.counts.get(name, 0) > 0)


def clipart(seed: int, size: int = 256) -> Image.Image:
    """A synthetic drawing: flat-filled shapes with ink outlines on a paper background."""
    rng = random.Random(seed)
    paper = rng.choice([(255, 255, 255), (250, 245, 230), (230, 240, 255)])
    image = Image.new("RGB", (size, size), paper)
    draw = ImageDraw.Draw(image)
    for _ in range(rng.randint(3, 7)):
        x0, y0 = rng.randint(0, size * 4 // 5), rng.randint(0, size * 4 // 5)
        x1, y1 = x0 + rng.randint(size // 10, size // 2), y0 + rng.randint(size // 10, size // 2)
        fill = tuple(rng.randint(40, 255) for _ in range(3))
        width = rng.randint(2, 5)
        shape = rng.random()
        if shape < 0.35:
            draw.ellipse((x0, y0, x1, y1), fill=fill, outline="black", width=width)
        elif shape < 0.7:
            draw.rectangle((x0, y0, x1, y1), fill=fill, outline="black", width=width)
        else:
            triangle = [(x0, y1), ((x0 + x1) // 2, y0), (x1, y1)]
            draw.polygon(triangle, fill=fill, outline="black", width=width)
    for _ in range(rng.randint(0, 4)):
        points = [(rng.randint(0, size), rng.randint(0, size)) for _ in range(3)]
        draw.line(points, fill="black", width=rng.randint(2, 4))
    return image


def encode(image: Image.Image, format: str = "PNG", **options: Any) -> bytes:
    out = io.BytesIO()
    image.save(out, format=format, **options)
    return out.getvalue()


def builtin_labelled_set(augmentations: int = 3, seed: int = 0) -> list[LabelledImage]:
    """scikit-image photos (``safe``, each with random crops, flips and JPEG re-encodes) and
    synthetic clip-art (``safe_drawing``)."""
    rng = random.Random(seed)
    images: list[LabelledImage] = []
    for name in BUILTIN_PHOTOS:
        photo = photo_image(name)
        images.append(LabelledImage("safe", f"skimage:{name}", encode(photo, "JPEG", quality=90)))
        for _ in range(augmentations):
            images.append(LabelledImage("safe", f"skimage:{name}", _augment(photo, rng)))
    for index in range(BUILTIN_DRAWINGS):
        images.append(LabelledImage("safe_drawing", f"clipart:{index}", encode(clipart(index))))
    return images


def _augment(photo: Image.Image, rng: random.Random) -> bytes:
    width, height = photo.size
    scale = rng.uniform(0.5, 1.0)
    crop_w, crop_h = int(width * scale), int(height * scale)
    left, top = rng.randint(0, width - crop_w), rng.randint(0, height - crop_h)
    crop = photo.crop((left, top, left + crop_w, top + crop_h))
    if rng.random() < 0.5:
        crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return encode(crop, "JPEG", quality=rng.randint(50, 95))


def labelled_folder(folder: Path) -> list[LabelledImage]:
    """``folder/<category>/<image>``; raises ImportFailed naming the folder or file at fault."""
    if not folder.is_dir():
        raise ImportFailed(f"{folder}: not a folder; give one folder per category inside it")
    images: list[LabelledImage] = []
    for entry in sorted(folder.iterdir()):
        if not entry.is_dir():
            continue
        if entry.name not in CATEGORY_ORDER:
            raise ImportFailed(
                f"{entry}: {entry.name!r} is not a category; name the folders after the "
                f"categories: {', '.join(CATEGORY_ORDER)}"
            )
        files = [f for f in sorted(entry.iterdir()) if f.suffix.lower() in IMAGE_SUFFIXES]
        images.extend(LabelledImage(entry.name, str(f), f.read_bytes()) for f in files)
    if not images:
        raise ImportFailed(
            f"{folder}: no labelled images; put them in {folder}/<category>/*.jpg|png"
        )
    return images


def load_labelled(folder: Path | None) -> tuple[list[LabelledImage], str]:
    """The images of ``folder``, or the built-in set when None; and where they came from."""
    if folder is None:
        return builtin_labelled_set(), "builtin"
    return labelled_folder(folder), str(folder)


def decoded(images: Iterable[LabelledImage], size: int) -> npt.NDArray[np.uint8]:
    """Decode as the consumer does (same resize), so prototypes see what Triton will see."""
    pixels = []
    for image in images:
        try:
            pixels.append(decode_image(image.data, size, _LIMITS).frames[0])
        except EventRejected as exc:
            raise ImportFailed(
                f"{image.source}: cannot be used as a labelled image: {exc}"
            ) from exc
    return np.stack(pixels)


def embed(
    model: NsfwModel, pixels: npt.NDArray[np.uint8], batch: int = 16
) -> npt.NDArray[np.float32]:
    """Unit-length embeddings of uint8 NHWC images at the model's input size."""
    wrapper = model.uint8_input()
    rows = []
    with torch.no_grad():
        for start in range(0, len(pixels), batch):
            _, embedding = wrapper(torch.from_numpy(pixels[start : start + batch]))
            rows.append(embedding.numpy())
    embeddings = np.concatenate(rows)
    return unit(embeddings)


def compute_prototypes(model: NsfwModel, images: list[LabelledImage], source: str) -> Prototypes:
    """Mean of the unit embeddings per category (each image weighs the same), made unit."""
    return prototypes_of(embed(model, decoded(images, model.cfg.input_size)), images, source)


def prototypes_of(
    embeddings: npt.NDArray[np.float32], images: list[LabelledImage], source: str
) -> Prototypes:
    matrix = np.full((len(CATEGORY_ORDER), embeddings.shape[1]), np.nan, dtype=np.float32)
    counts: dict[str, int] = {}
    for row, category in enumerate(CATEGORY_ORDER):
        members = embeddings[[i for i, image in enumerate(images) if image.category == category]]
        if len(members):
            matrix[row] = unit(members.mean(axis=0, keepdims=True))[0]
            counts[category] = len(members)
    return Prototypes(matrix=matrix, counts=counts, source=source)


def leave_one_source_out(
    embeddings: npt.NDArray[np.float32], images: list[LabelledImage]
) -> dict[str, list[float]]:
    """Per category, each image's similarity to the prototype of the other sources' images."""
    result: dict[str, list[float]] = {}
    for category in CATEGORY_ORDER:
        indices = [i for i, image in enumerate(images) if image.category == category]
        sources = {images[i].source for i in indices}
        if len(sources) < 2:
            continue
        values: list[float] = []
        for source in sorted(sources):
            held = [i for i in indices if images[i].source == source]
            rest = [i for i in indices if images[i].source != source]
            prototype = unit(embeddings[rest].mean(axis=0, keepdims=True))[0]
            values.extend(float(v) for v in embeddings[held] @ prototype)
        result[category] = values
    return result


def probe_images() -> dict[str, bytes]:
    """Images outside what a photo moderation model is for, plus unseen in-class images."""
    rng = np.random.default_rng(0)
    ramp = np.linspace(0, 255, 224)
    gradient = np.stack(
        [np.tile(ramp, (224, 1)), np.tile(ramp[:, None], (1, 224)), np.full((224, 224), 128.0)],
        axis=-1,
    ).astype(np.uint8)
    probes = {
        "flat_white": encode(Image.new("RGB", (224, 224), (255, 255, 255))),
        "flat_red": encode(Image.new("RGB", (224, 224), (200, 30, 30))),
        "gradient": encode(Image.fromarray(gradient)),
        "uniform_noise": encode(
            Image.fromarray(rng.integers(0, 256, (224, 224, 3), dtype=np.uint8))
        ),
        "scanned_page": encode(photo_image("page")),
        "text": encode(photo_image("text")),
        "logo": encode(photo_image("logo")),
    }
    for name in HELD_OUT_PHOTOS:
        probes[f"unseen_photo_{name}"] = encode(photo_image(name), "JPEG", quality=90)
    for offset in range(2):
        seed = HELD_OUT_DRAWING_SEED + offset
        probes[f"unseen_clipart_{offset}"] = encode(clipart(seed))
    return probes


def calibration_report(
    model: NsfwModel, images: list[LabelledImage], source: str
) -> dict[str, Any]:
    """What a threshold is chosen from: held-out labelled similarities and probe images."""
    embeddings = embed(model, decoded(images, model.cfg.input_size))
    prototypes = prototypes_of(embeddings, images, source)
    held_out = leave_one_source_out(embeddings, images)
    probes = probe_images()
    pixels = decoded(
        [LabelledImage("probe", name, data) for name, data in probes.items()], model.cfg.input_size
    )
    with torch.no_grad():
        probs, embedding = model.uint8_input()(torch.from_numpy(pixels))
    similarity = unit(embedding.numpy()) @ np.nan_to_num(prototypes.matrix).T
    probe_rows = {}
    for row, name in enumerate(probes):
        predicted = int(np.argmax(probs[row].numpy()))
        category = CATEGORY_ORDER[predicted]
        has_prototype = prototypes.counts.get(category, 0) > 0
        probe_rows[name] = {
            "predicted": category,
            "probability": round(float(probs[row, predicted]), 3),
            "similarity": round(float(similarity[row, predicted]), 3) if has_prototype else None,
        }
    return {
        "model": model.cfg.name,
        "labelled": source,
        "counts": prototypes.counts,
        "held_out": {
            category: {
                "images": len(values),
                "min": round(min(values), 3),
                "p5": round(float(np.percentile(values, 5)), 3),
                "median": round(float(np.median(values)), 3),
            }
            for category, values in held_out.items()
        },
        "probes": probe_rows,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.prototypes", description=__doc__)
    parser.add_argument("--model", choices=sorted(MODELS), default="mobilenet_v2")
    parser.add_argument("--labelled", type=Path, help="folder of <category>/ folders of images")
    parser.add_argument("--json", type=Path, help="also write the report here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        images, source = load_labelled(args.labelled)
        report = calibration_report(load(args.model), images, source)
    except ImportFailed as exc:
        sys.stderr.write(f"prototypes failed: {exc}\n")
        return 1
    text = json.dumps(report, indent=2)
    sys.stdout.write(text + "\n")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
