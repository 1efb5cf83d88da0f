"""The scenes of the demo set: one function per category and per kind of hard negative.

Each scene draws on a background canvas with the fonts and QR styles of its split only
(``SplitFactors``), so held-out factors stay held out, and reports what it used. Faker's
dates, times and card expiries depend on today's date, so scenes draw those from the seed
themselves: the same seed must give the same images tomorrow.
"""

from __future__ import annotations

import io
import random
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import qrcode
import segno
from faker import Faker
from PIL import Image, ImageDraw, ImageFont, ImageOps
from qrcode.image.styledpil import StyledPilImage
from qrcode.image.styles.moduledrawers.pil import (
    CircleModuleDrawer,
    GappedSquareModuleDrawer,
    RoundedModuleDrawer,
)

from training.heads.backgrounds import linear_gradient
from training.heads.render import (
    RGB,
    contrasting,
    dark_colour,
    font,
    light_colour,
    paste_quad,
    place_text,
    random_colour,
    random_quad,
    text_patch,
    wrap,
)

QrModules = Literal["square", "rounded", "gapped", "circle"]
FAKER_LOCALES = ("en_US", "en_GB", "de_DE", "fr_FR", "es_ES", "it_IT", "nl_NL", "pt_BR", "en_IN")


@dataclass(frozen=True)
class QrStyle:
    """How a QR code looks: the library that encodes and draws it, and its options."""

    id: str
    generator: Literal["qrcode", "segno"]
    error: Literal["L", "M", "Q", "H"]
    dark: RGB
    light: RGB
    border: int
    """Quiet zone, in modules."""
    modules: QrModules = "square"
    finder: RGB | None = None
    """Finder patterns in their own colour (segno only)."""


@dataclass(frozen=True)
class SplitFactors:
    """What one split may draw with; no value is shared with another split."""

    photos: tuple[str, ...]
    procedural: tuple[str, ...]
    fonts: tuple[str, ...]
    qr_styles: tuple[QrStyle, ...]

    @property
    def backgrounds(self) -> tuple[str, ...]:
        return tuple(f"photo:{name}" for name in self.photos) + tuple(
            f"procedural:{kind}" for kind in self.procedural
        )


@dataclass
class Scene:
    """One drawing in progress: its randomness, what it may use and what it used."""

    rng: random.Random
    fake: Faker
    factors: SplitFactors
    canvas: Image.Image
    fonts_used: list[str] = field(default_factory=list)
    qr_style: str | None = None
    payload: str | None = None

    def font(self, size: int) -> ImageFont.FreeTypeFont:
        name = self.rng.choice(self.factors.fonts)
        if name not in self.fonts_used:
            self.fonts_used.append(name)
        return font(name, max(6, size))

    @property
    def short_side(self) -> int:
        return min(self.canvas.size)


def ascii_only(text: str) -> str:
    """Accents dropped: decoded QR payloads then compare exactly, and every font has the glyphs
    (Pillow's Aileron lacks some that faker's locales use)."""
    return unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()


# --- qr_solicitation ------------------------------------------------------------------------

_QR_ERRORS = {
    "L": qrcode.constants.ERROR_CORRECT_L,
    "M": qrcode.constants.ERROR_CORRECT_M,
    "Q": qrcode.constants.ERROR_CORRECT_Q,
    "H": qrcode.constants.ERROR_CORRECT_H,
}
_QR_DRAWERS = {
    "rounded": RoundedModuleDrawer,
    "gapped": GappedSquareModuleDrawer,
    "circle": CircleModuleDrawer,
}
_FLYER_TITLES = (
    "SCAN TO PAY",
    "SCAN ME",
    "PAY HERE",
    "DONATE",
    "SCAN & WIN",
    "JOIN NOW",
    "ORDER HERE",
    "TIP JAR",
    "FREE GIFT",
    "50% OFF",
)


def qr_payload(fake: Faker, rng: random.Random) -> str:
    """A payment or contact link of the kind solicitation spam carries."""
    user = ascii_only(fake.user_name())
    templates: tuple[Callable[[], str], ...] = (
        lambda: f"https://pay.example/{fake.bothify('??##-####').lower()}",
        lambda: f"https://wa.me/{fake.msisdn()}",
        lambda: f"https://t.me/{user}",
        lambda: f"tel:+{fake.msisdn()}",
        lambda: (
            f"upi://pay?pa={user}@okbank&pn={ascii_only(fake.first_name())}"
            f"&am={rng.randint(5, 500)}"
        ),
        lambda: f"https://shop.example/p/{fake.slug()}?ref={fake.bothify('####')}",
        lambda: (
            f"BEGIN:VCARD\nVERSION:3.0\nFN:{ascii_only(fake.name())}\nTEL:+{fake.msisdn()}\nEND:VCARD"
        ),
        lambda: f"mailto:{ascii_only(fake.email())}",
    )
    return rng.choice(templates)()


def render_qr(payload: str, style: QrStyle, module_px: int, mask: int) -> Image.Image:
    """The code of ``payload`` drawn by the style's own library, as an opaque RGBA patch.

    ``mask`` (0-7) is the data mask; any mask gives a valid code, and choosing it skips both
    libraries' search for the best one, most of their encoding time.
    """
    if style.generator == "segno":
        code = segno.make(payload, error=style.error, micro=False, boost_error=False, mask=mask)
        out = io.BytesIO()
        code.save(
            out,
            kind="png",
            scale=module_px,
            border=style.border,
            dark=style.dark,
            light=style.light,
            finder_dark=style.finder or style.dark,
        )
        return Image.open(io.BytesIO(out.getvalue())).convert("RGBA")
    qr = qrcode.QRCode(
        error_correction=_QR_ERRORS[style.error],
        box_size=module_px,
        border=style.border,
        mask_pattern=mask,
    )
    qr.add_data(payload)
    qr.make(fit=True)
    if style.modules == "square":
        drawn = qr.make_image().get_image()
    else:
        drawn = qr.make_image(
            image_factory=StyledPilImage, module_drawer=_QR_DRAWERS[style.modules]()
        ).get_image()
    # Drawn black on white, then recoloured: qrcode's colour masks work pixel by pixel in Python.
    gray = drawn.convert("L")
    return ImageOps.colorize(gray, black=style.dark, white=style.light).convert("RGBA")


def flyer_words(fake: Faker, rng: random.Random) -> tuple[str, str]:
    """A flyer's call to action and its line of marketing text."""
    blurb = f"{ascii_only(fake.catch_phrase())} {ascii_only(fake.bs()).capitalize()}"
    return rng.choice(_FLYER_TITLES), blurb


def _flyer(scene: Scene, code: Image.Image) -> Image.Image:
    """A printed flyer around ``code``: paper, a band, a call to action and a line of text."""
    rng = scene.rng
    width = 360
    height = rng.randint(440, 540)
    paper = light_colour(rng)
    flyer = Image.new("RGBA", (width, height), (*paper, 255))
    draw = ImageDraw.Draw(flyer)
    band = dark_colour(rng) if rng.random() < 0.5 else random_colour(rng)
    band_h = rng.randint(60, 90)
    draw.rectangle((0, 0, width, band_h), fill=(*band, 255))
    heading, blurb = flyer_words(scene.fake, rng)
    title = scene.font(rng.randint(30, 42))
    lines = wrap(heading, title, width - 24)
    title_patch = text_patch(
        lines,
        title,
        contrasting(flyer.convert("RGB"), (0, 0, width, band_h), rng),
        style="plain",
        backing=band,
    )
    title_patch.thumbnail((width - 16, band_h - 4))
    flyer.alpha_composite(
        title_patch, ((width - title_patch.size[0]) // 2, (band_h - title_patch.size[1]) // 2)
    )
    side = rng.randint(200, 260)
    code = code.resize((side, side), Image.Resampling.LANCZOS)
    code_top = band_h + rng.randint(16, 40)
    flyer.alpha_composite(code, ((width - side) // 2, code_top))
    body_px = rng.randint(15, 20)
    body = scene.font(body_px)
    below = wrap(blurb, body, width - 40)[
        : max(1, (height - code_top - side - 20) // (body_px + 6))
    ]
    ink = dark_colour(rng)
    draw.multiline_text((20, code_top + side + 14), "\n".join(below), font=body, fill=(*ink, 255))
    return flyer


def qr_solicitation(scene: Scene) -> None:
    rng = scene.rng
    style = rng.choice(scene.factors.qr_styles)
    payload = qr_payload(scene.fake, rng)
    code = render_qr(payload, style, module_px=rng.randint(4, 7), mask=rng.randint(0, 7))
    scene.qr_style, scene.payload = style.id, payload
    if rng.random() < 0.5:
        flyer = _flyer(scene, code)
        quad = random_quad(
            scene.canvas.size, flyer.size, rng, cover=(0.7, 0.98), max_angle=15, max_jitter=0.08
        )
        paste_quad(scene.canvas, flyer, quad)
    else:
        quad = random_quad(
            scene.canvas.size, code.size, rng, cover=(0.3, 0.7), max_angle=30, max_jitter=0.1
        )
        paste_quad(scene.canvas, code, quad)


# --- contact_overlay ------------------------------------------------------------------------


def _contact(fake: Faker, rng: random.Random) -> str:
    user = ascii_only(fake.user_name())
    templates: tuple[Callable[[], str], ...] = (
        lambda: fake.phone_number(),
        lambda: f"WhatsApp {fake.phone_number()}",
        lambda: f"Call {fake.phone_number()}",
        lambda: f"Text me {fake.phone_number()}",
        lambda: f"Tel: {fake.phone_number()}",
        lambda: f"@{user}",
        lambda: f"IG @{user}",
        lambda: f"DM @{user}",
        lambda: f"Follow @{user}",
        lambda: f"t.me/{user}",
        lambda: fake.url(),
        lambda: f"www.{fake.domain_name()}",
        lambda: fake.email(),
    )
    return rng.choice(templates)()


def contact_lines(fake: Faker, rng: random.Random) -> list[str]:
    """One or two phone numbers, handles or URLs, sometimes beside a slogan."""
    lines = [_contact(fake, rng) for _ in range(rng.randint(1, 2))]
    if rng.random() < 0.4:
        lines.insert(rng.randint(0, len(lines)), ascii_only(fake.catch_phrase()))
    return lines


def contact_overlay(scene: Scene) -> None:
    rng = scene.rng
    lines = contact_lines(scene.fake, rng)
    size = rng.randint(max(14, scene.short_side // 26), max(18, scene.short_side // 11))
    place_text(scene.canvas, lines, scene.font(size), rng, max_angle=12)


# --- payment_card ---------------------------------------------------------------------------

_CARD_TYPES = ("visa16", "mastercard", "discover", "jcb16")
CARD_SIZE = (428, 270)
"""ISO/IEC 7810 ID-1 proportions (85.60 x 53.98 mm)."""


def card_words(fake: Faker, rng: random.Random) -> tuple[str, str, str, str]:
    """A card's bank, its 16 digits in groups of four, expiry (MM/YY) and holder."""
    bank = ascii_only(fake.company().split()[0]).upper() + " BANK"
    digits = fake.credit_card_number(card_type=rng.choice(_CARD_TYPES))
    number = " ".join(digits[i : i + 4] for i in range(0, len(digits), 4))
    expiry = f"{rng.randint(1, 12):02d}/{rng.randint(24, 35)}"
    return bank, number, expiry, ascii_only(fake.name()).upper()


def render_card(scene: Scene) -> Image.Image:
    """A synthetic bank card: gradient, chip, contactless mark, grouped number, expiry, name."""
    rng = scene.rng
    bank_name, number, expiry, holder = card_words(scene.fake, rng)
    width, height = CARD_SIZE
    card = linear_gradient(
        CARD_SIZE, random_colour(rng), random_colour(rng), rng.uniform(0, np.pi)
    ).convert("RGBA")
    overlay = Image.new("RGBA", CARD_SIZE, (0, 0, 0, 0))
    draw = ImageDraw.Draw(overlay)
    for _ in range(rng.randint(0, 3)):
        r = rng.randint(60, 220)
        cx, cy = rng.randint(0, width), rng.randint(0, height)
        draw.ellipse(
            (cx - r, cy - r, cx + r, cy + r), fill=(*random_colour(rng), rng.randint(20, 60))
        )
    card.alpha_composite(overlay)
    draw = ImageDraw.Draw(card)
    ink = contrasting(card.convert("RGB"), (0, 0, width, height), rng)
    shade = (0, 0, 0) if sum(ink) > 384 else (255, 255, 255)
    bank = scene.font(rng.randint(18, 24))
    draw.text((28, 22), bank_name, font=bank, fill=ink)
    chip = (40, 96, 40 + 56, 96 + 44)
    draw.rounded_rectangle(chip, radius=8, fill=(214, 178, 92), outline=(150, 120, 50), width=2)
    for offset in (15, 29):
        draw.line(
            (chip[0], chip[1] + offset, chip[2], chip[1] + offset), fill=(150, 120, 50), width=1
        )
    draw.line((chip[0] + 28, chip[1], chip[0] + 28, chip[3]), fill=(150, 120, 50), width=1)
    for step in range(3):
        r = 8 + step * 7
        draw.arc((118 - r, 118 - r, 118 + r, 118 + r), start=-45, end=45, fill=ink, width=3)
    numeral = scene.font(rng.randint(24, 30))
    # Embossed digits: a one-pixel shade under the ink.
    draw.text((41, 161), number, font=numeral, fill=shade)
    draw.text((40, 160), number, font=numeral, fill=ink)
    small = scene.font(9)
    draw.text((150, 203), "VALID\nTHRU", font=small, fill=ink)
    draw.text((190, 203), expiry, font=scene.font(16), fill=ink)
    draw.text((40, 230), holder, font=scene.font(rng.randint(15, 18)), fill=ink)
    mask = Image.new("L", CARD_SIZE, 0)
    ImageDraw.Draw(mask).rounded_rectangle((0, 0, width - 1, height - 1), radius=18, fill=255)
    card.putalpha(mask)
    return card


def payment_card(scene: Scene) -> None:
    card = render_card(scene)
    quad = random_quad(
        scene.canvas.size, card.size, scene.rng, cover=(0.5, 0.95), max_angle=35, max_jitter=0.1
    )
    paste_quad(scene.canvas, card, quad)
