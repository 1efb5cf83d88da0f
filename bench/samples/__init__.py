"""Sample images for the demo and the tests: benign photos, and stand-ins for explicit content.

The stand-ins (``standins/*.png``, made by ``python -m training.standins``) are benign photos
carrying a small adversarial perturbation that makes ``nsfw_mobilenet_v2`` score them as
explicit or suggestive; ``standins/manifest.json`` records each one's scores. They only work
for that model, sent as they are (224x224 PNG).
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

STANDINS_DIR = Path(str(resources.files(__name__) / "standins"))
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "camera", "horse")


@dataclass(frozen=True)
class Sample:
    name: str
    data: bytes
    expected: dict[str, float] | None = None
    """Scores the model gave when the sample was made (stand-ins only)."""


def photo_image(name: str) -> Image.Image:
    """One of scikit-image's bundled images as RGB (needs the ``local`` extra)."""
    from skimage import data

    loader: Callable[[], Any] = getattr(data, name)
    return Image.fromarray(np.asarray(loader())).convert("RGB")


def photos(quality: int = 90) -> list[Sample]:
    """scikit-image's sample photos as JPEG (needs the ``local`` extra)."""
    samples = []
    for name in PHOTOS:
        out = io.BytesIO()
        photo_image(name).save(out, format="JPEG", quality=quality)
        samples.append(Sample(name, out.getvalue()))
    return samples


def standins() -> list[Sample]:
    """The stand-ins, with the scores recorded when they were made."""
    manifest = json.loads((STANDINS_DIR / "manifest.json").read_text())
    return [
        Sample(
            Path(entry["file"]).stem,
            (STANDINS_DIR / entry["file"]).read_bytes(),
            {str(k): float(v) for k, v in entry["scores"].items()},
        )
        for entry in manifest["standins"]
    ]
