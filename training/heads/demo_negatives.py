"""The demo set's hard negatives (barcodes, chessboards, printed pages, clip-art, plain and
captioned photos), and the catalogue of every scene and of the words scenes write."""

from __future__ import annotations

import random
from collections.abc import Callable
from datetime import date, timedelta

import barcode
import numpy as np
from barcode.writer import ImageWriter
from faker import Faker
from PIL import Image, ImageDraw

from training.heads.demo_scenes import (
    Scene,
    ascii_only,
    card_words,
    contact_lines,
    contact_overlay,
    flyer_words,
    payment_card,
    qr_payload,
    qr_solicitation,
)
from training.heads.render import (
    dark_colour,
    light_colour,
    paste_quad,
    place_text,
    random_colour,
    random_quad,
    text_patch,
    wrap,
)

# --- hard negatives -------------------------------------------------------------------------


def barcode_words(fake: Faker, rng: random.Random) -> tuple[str, str, str]:
    """A symbology (EAN-13 or Code 128), what it encodes, and a product name with a price."""
    if rng.random() < 0.5:
        symbology, data = "ean13", fake.ean13()[:12]
    else:
        symbology, data = "code128", fake.bothify("??-#####").upper()
    label = f"{ascii_only(fake.word()).title()}  {rng.randint(1, 99)}.{rng.randint(0, 99):02d}"
    return symbology, data, label


def barcode_label(scene: Scene) -> None:
    """A retail barcode on a label with a product name and price."""
    rng = scene.rng
    symbology, data, text = barcode_words(scene.fake, rng)
    writer = ImageWriter()
    light, dark = light_colour(rng), dark_colour(rng)
    options = {
        "module_width": rng.uniform(0.25, 0.4),
        "module_height": rng.uniform(10, 18),
        "quiet_zone": rng.uniform(2, 6),
        "write_text": False,
        "background": "#{:02x}{:02x}{:02x}".format(*light),
        "foreground": "#{:02x}{:02x}{:02x}".format(*dark),
    }
    code = barcode.get(symbology, data, writer=writer)
    bars = code.render(options).convert("RGBA")
    caption = scene.font(rng.randint(14, 20))
    label_text = text_patch(
        [code.get_fullcode(), text], caption, dark, style="plain", backing=light, align="center"
    )
    width = max(bars.size[0], label_text.size[0]) + 20
    label = Image.new("RGBA", (width, bars.size[1] + label_text.size[1] + 20), (*light, 255))
    label.alpha_composite(bars, ((width - bars.size[0]) // 2, 10))
    label.alpha_composite(label_text, ((width - label_text.size[0]) // 2, bars.size[1] + 10))
    quad = random_quad(
        scene.canvas.size, label.size, rng, cover=(0.4, 0.85), max_angle=30, max_jitter=0.1
    )
    paste_quad(scene.canvas, label, quad)


def checker(scene: Scene) -> None:
    """A chessboard, a gingham or a random mosaic of square modules (QR-like, no finders)."""
    rng = scene.rng
    dark, light = dark_colour(rng), light_colour(rng)
    pattern = rng.choice(("chessboard", "gingham", "mosaic"))
    nrng = np.random.default_rng(rng.getrandbits(64))
    if pattern == "chessboard":
        cells = rng.randint(4, 10)
        grid = (np.indices((cells, cells)).sum(axis=0) % 2).astype(bool)
    elif pattern == "mosaic":
        cells = rng.randint(17, 37)
        grid = nrng.random((cells, cells)) < rng.uniform(0.35, 0.6)
    else:
        cells = rng.randint(8, 20)
        stripes = (np.arange(cells) % 2).astype(bool)
        grid = stripes[:, None] | stripes[None, :]
    pixels = np.where(grid[..., None], np.array(dark, np.uint8), np.array(light, np.uint8))
    module = max(4, 360 // cells)
    patch = Image.fromarray(pixels.astype(np.uint8), "RGB").resize(
        (cells * module, cells * module), Image.Resampling.NEAREST
    )
    if pattern == "gingham":
        patch = Image.blend(patch, Image.new("RGB", patch.size, light), 0.35)
    quad = random_quad(
        scene.canvas.size, patch.size, rng, cover=(0.35, 0.9), max_angle=30, max_jitter=0.1
    )
    paste_quad(scene.canvas, patch.convert("RGBA"), quad)


def page_words(fake: Faker, rng: random.Random) -> tuple[str, list[str]]:
    """A heading and more paragraphs of lorem ipsum than a page holds; no contact details."""
    heading = ascii_only(fake.sentence(nb_words=rng.randint(3, 6))).rstrip(".")
    paragraphs = [ascii_only(fake.paragraph(nb_sentences=rng.randint(3, 6))) for _ in range(12)]
    return heading, paragraphs


def text_page(scene: Scene) -> None:
    """A printed page: a title and paragraphs in one font, until the page is full."""
    rng = scene.rng
    heading, paragraphs = page_words(scene.fake, rng)
    width = rng.randint(380, 480)
    height = int(width * rng.uniform(1.2, 1.45))
    paper = light_colour(rng)
    page = Image.new("RGBA", (width, height), (*paper, 255))
    draw = ImageDraw.Draw(page)
    ink = dark_colour(rng)
    title_px, body_px = rng.randint(20, 28), rng.randint(11, 15)
    title, body = scene.font(title_px), scene.font(body_px)
    margin = rng.randint(24, 40)
    y = margin
    for line in wrap(heading, title, width - 2 * margin):
        draw.text((margin, y), line, font=title, fill=ink)
        y += title_px + 6
    y += 8
    for paragraph in paragraphs:
        if y >= height - margin - body_px:
            break
        for line in wrap(paragraph, body, width - 2 * margin):
            if y > height - margin - body_px:
                break
            draw.text((margin, y), line, font=body, fill=ink)
            y += body_px + 4
        y += body_px
    quad = random_quad(
        scene.canvas.size, page.size, rng, cover=(0.7, 1.0), max_angle=12, max_jitter=0.08
    )
    paste_quad(scene.canvas, page, quad)


def clipart(scene: Scene) -> None:
    """Flat shapes with ink outlines, drawn over the background."""
    rng = scene.rng
    draw = ImageDraw.Draw(scene.canvas)
    width, height = scene.canvas.size
    for _ in range(rng.randint(3, 8)):
        x0, y0 = rng.randint(0, width * 4 // 5), rng.randint(0, height * 4 // 5)
        x1 = x0 + rng.randint(width // 10, width // 2)
        y1 = y0 + rng.randint(height // 10, height // 2)
        fill = random_colour(rng)
        outline = rng.randint(2, 5)
        shape = rng.random()
        if shape < 0.35:
            draw.ellipse((x0, y0, x1, y1), fill=fill, outline="black", width=outline)
        elif shape < 0.7:
            draw.rectangle((x0, y0, x1, y1), fill=fill, outline="black", width=outline)
        else:
            draw.polygon(
                [(x0, y1), ((x0 + x1) // 2, y0), (x1, y1)],
                fill=fill,
                outline="black",
                width=outline,
            )
    for _ in range(rng.randint(0, 4)):
        points = [(rng.randint(0, width), rng.randint(0, height)) for _ in range(3)]
        draw.line(points, fill="black", width=rng.randint(2, 4))


def plain_photo(scene: Scene) -> None:
    """The background alone."""


def _day(rng: random.Random) -> date:
    return date(2000, 1, 1) + timedelta(days=rng.randint(0, 9000))


def caption_lines(fake: Faker, rng: random.Random) -> list[str]:
    """One or two harmless lines: a date, a time, a country, a caption; no contact details."""
    choices: tuple[Callable[[], str], ...] = (
        lambda: _day(rng).strftime(rng.choice(("%d.%m.%Y", "%B %d, %Y", "%Y-%m-%d", "%d %b %Y"))),
        # Not fake.city(): its it_IT list is built from a set, so its order, and the city a
        # seed picks, change with PYTHONHASHSEED from one run to the next.
        lambda: ascii_only(fake.country()),
        lambda: ascii_only(fake.sentence(nb_words=rng.randint(2, 5))).rstrip("."),
        lambda: rng.choice(("Happy birthday!", "Summer holidays", "Good morning", "Best day ever")),
        lambda: f"{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}",
    )
    return [rng.choice(choices)() for _ in range(rng.randint(1, 2))]


def captioned_photo(scene: Scene) -> None:
    """Harmless text over the background."""
    rng = scene.rng
    lines = caption_lines(scene.fake, rng)
    size = rng.randint(max(14, scene.short_side // 26), max(18, scene.short_side // 11))
    place_text(scene.canvas, lines, scene.font(size), rng, max_angle=12)


WORDS: dict[str, Callable[[Faker, random.Random], object]] = {
    "qr_payload": qr_payload,
    "flyer": flyer_words,
    "contact": contact_lines,
    "card": card_words,
    "barcode": barcode_words,
    "page": page_words,
    "caption": caption_lines,
}
"""Everything a scene writes comes from one of these; the scenes call Faker nowhere else."""

POSITIVE_SCENES: dict[str, Callable[[Scene], None]] = {
    "qr_solicitation": qr_solicitation,
    "contact_overlay": contact_overlay,
    "payment_card": payment_card,
}
NEGATIVE_SCENES: dict[str, Callable[[Scene], None]] = {
    "barcode": barcode_label,
    "checker": checker,
    "text_page": text_page,
    "clipart": clipart,
    "plain_photo": plain_photo,
    "captioned_photo": captioned_photo,
}
