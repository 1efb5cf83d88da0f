"""The demo set's plan: its categories, tenants and negatives, the factors (photos, textures,
fonts, QR styles) of each split, and the list of images to draw."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from training.heads.demo_negatives import NEGATIVE_SCENES, POSITIVE_SCENES
from training.heads.demo_scenes import (
    QrStyle,
    SplitFactors,
)
from training.heads.render import PILLOW_FONT

# Bump when a scene changes what it draws: the same seed then means different images.
DEMO_SET_VERSION = 1
NAME = "modstream demo set"
CATEGORIES = tuple(POSITIVE_SCENES)
TENANTS: dict[str, str | None] = {
    "qr_solicitation": None,
    "contact_overlay": "marketplace",
    "payment_card": "tickets",
}
NEGATIVE_KINDS = tuple(NEGATIVE_SCENES)
NEGATIVES_PER_CLASS = 2
"""Negatives in a split: this many times the images of one category."""
PHOTO_SHARE = 0.7
"""Share of images drawn on a sample photo; the rest on a procedural texture."""
SPLITS = ("train", "test")
NONE_FOLDER = "none"

TRAIN = SplitFactors(
    photos=(
        "astronaut",
        "coffee",
        "rocket",
        "immunohistochemistry",
        "camera",
        "brick",
        "grass",
        "coins",
        "page",
        "horse",
    ),
    procedural=("linear_gradient", "value_noise", "tiles"),
    fonts=("DejaVuSans", "DejaVuSans-Bold", "DejaVuSansMono", "DejaVuSerif-Bold"),
    qr_styles=(
        QrStyle("qrcode-square-L-black", "qrcode", "L", (0, 0, 0), (255, 255, 255), 4),
        QrStyle(
            "qrcode-rounded-M-navy", "qrcode", "M", (25, 35, 95), (255, 255, 255), 2, "rounded"
        ),
        QrStyle(
            "qrcode-gapped-L-maroon", "qrcode", "L", (105, 20, 30), (248, 244, 236), 4, "gapped"
        ),
        QrStyle(
            "qrcode-circle-M-charcoal", "qrcode", "M", (20, 20, 20), (240, 240, 240), 2, "circle"
        ),
    ),
)
TEST = SplitFactors(
    photos=("chelsea", "hubble_deep_field", "retina", "gravel", "moon", "clock", "text"),
    procedural=("radial_gradient", "stripes", "speckle"),
    fonts=("DejaVuSerif", "DejaVuSansMono-Bold", PILLOW_FONT),
    qr_styles=(
        QrStyle("segno-Q-green-cream", "segno", "Q", (10, 70, 40), (250, 245, 225), 3),
        QrStyle("segno-H-purple", "segno", "H", (70, 20, 90), (252, 252, 240), 1),
        QrStyle(
            "segno-Q-slate-red-finders",
            "segno",
            "Q",
            (45, 45, 50),
            (225, 235, 245),
            3,
            finder=(180, 20, 20),
        ),
        QrStyle("segno-H-blue-pink", "segno", "H", (0, 60, 120), (255, 240, 245), 1),
    ),
)
FACTORS = {"train": TRAIN, "test": TEST}


@dataclass(frozen=True)
class Job:
    """One image to draw: its split, what it shows, and its number among those."""

    split: str
    kind: str
    number: int
    seed: int

    @property
    def label(self) -> str | None:
        return self.kind if self.kind in POSITIVE_SCENES else None

    @property
    def path(self) -> str:
        folder = self.label or NONE_FOLDER
        return f"images/{self.split}/{folder}/{self.kind}-{self.number:04d}"


@dataclass(frozen=True)
class Drawn:
    job: Job
    path: str
    """Relative to the set's folder, with the suffix the encoding chose."""
    background: str
    fonts: tuple[str, ...]
    qr_style: str | None
    payload: str | None
    decoded: bool | None
    """Whether OpenCV read ``payload`` back from the file (QR images of the test split)."""


def plan(seed: int, train_per_class: int, test_per_class: int) -> list[Job]:
    """Every image of the set, in manifest order."""
    jobs = []
    for split, per_class in (("train", train_per_class), ("test", test_per_class)):
        kinds = [kind for kind in CATEGORIES for _ in range(per_class)]
        negatives = NEGATIVES_PER_CLASS * per_class
        kinds += [NEGATIVE_KINDS[i % len(NEGATIVE_KINDS)] for i in range(negatives)]
        numbers: Counter[str] = Counter()
        for kind in kinds:
            jobs.append(Job(split, kind, numbers[kind], seed))
            numbers[kind] += 1
    return jobs
