"""Drawing primitives of the demo set: fonts, colours, perspective pastes, text, finishing.

Every function takes its randomness from the ``random.Random`` it is given, so a scene is a
pure function of its seed. Pillow, FreeType, libjpeg and OpenCV (warps and blur, single
threaded) decide the exact bytes: the same seed gives the same files for one set of library
versions (``demo_set`` records them).
"""

from __future__ import annotations

import colorsys
import functools
import io
import random
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFont, ImageStat

from consumer.errors import ConfigError

RGB = tuple[int, int, int]
Point = tuple[float, float]
Quad = tuple[Point, Point, Point, Point]
"""Corners clockwise from the top left."""

FONT_DIR = Path("/usr/share/fonts/truetype/dejavu")
# Pillow's own default font: a family DejaVu does not have, so a split can hold out a family.
PILLOW_FONT = "pillow:Aileron-Regular"


class RenderError(ConfigError):
    """A font or sample photo the demo set draws with is missing; the message says which."""


@functools.lru_cache(maxsize=256)
def font(name: str, size: int) -> ImageFont.FreeTypeFont:
    """A DejaVu TTF by file stem (``DejaVuSans-Bold``) or ``PILLOW_FONT``, at ``size`` px."""
    if name == PILLOW_FONT:
        loaded = ImageFont.load_default(size)
        if not isinstance(loaded, ImageFont.FreeTypeFont):
            raise RenderError("Pillow was built without FreeType; the demo set needs it")
        return loaded
    path = FONT_DIR / f"{name}.ttf"
    if not path.is_file():
        raise RenderError(
            f"font {path} not found; install Debian's fonts-dejavu-core (scripts/setup.sh does)"
        )
    return ImageFont.truetype(str(path), size)


def random_colour(rng: random.Random) -> RGB:
    return (rng.randint(0, 255), rng.randint(0, 255), rng.randint(0, 255))


def _hls(rng: random.Random, lightness: tuple[float, float], saturation: float) -> RGB:
    r, g, b = colorsys.hls_to_rgb(rng.random(), rng.uniform(*lightness), rng.uniform(0, saturation))
    return (round(r * 255), round(g * 255), round(b * 255))


def dark_colour(rng: random.Random) -> RGB:
    return _hls(rng, (0.0, 0.3), 0.9)


def light_colour(rng: random.Random) -> RGB:
    return _hls(rng, (0.8, 1.0), 0.7)


def canvas_size(rng: random.Random) -> tuple[int, int]:
    """Width and height of one demo image, each 320 to 640 px."""
    return rng.randint(320, 640), rng.randint(320, 640)


def random_quad(
    canvas: tuple[int, int],
    patch: tuple[int, int],
    rng: random.Random,
    *,
    cover: tuple[float, float],
    max_angle: float,
    max_jitter: float,
) -> Quad:
    """Where a patch lands: scaled so its longer side spans ``cover`` of the canvas's shorter
    side, rotated by up to ``max_angle`` degrees, corners moved by up to ``max_jitter`` of its
    size (perspective), and placed wholly inside the canvas (shrunk until it fits)."""
    width, height = canvas
    patch_w, patch_h = patch
    scale = rng.uniform(*cover) * min(width, height) / max(patch_w, patch_h)
    angle = np.radians(rng.uniform(-max_angle, max_angle))
    jitter = [(rng.uniform(-1, 1), rng.uniform(-1, 1)) for _ in range(4)]
    corners = ((-0.5, -0.5), (0.5, -0.5), (0.5, 0.5), (-0.5, 0.5))
    while True:
        w, h = patch_w * scale, patch_h * scale
        cos, sin = np.cos(angle), np.sin(angle)
        points = []
        for (cx, cy), (jx, jy) in zip(corners, jitter, strict=True):
            px = cx * w + jx * max_jitter * w
            py = cy * h + jy * max_jitter * h
            points.append((px * cos - py * sin, px * sin + py * cos))
        xs, ys = [p[0] for p in points], [p[1] for p in points]
        span_x, span_y = max(xs) - min(xs), max(ys) - min(ys)
        if span_x <= width - 4 and span_y <= height - 4:
            break
        scale *= 0.9
    left = rng.uniform(2 - min(xs), width - 2 - max(xs))
    top = rng.uniform(2 - min(ys), height - 2 - max(ys))
    p0, p1, p2, p3 = ((x + left, y + top) for x, y in points)
    return (p0, p1, p2, p3)


def paste_quad(canvas: Image.Image, patch: Image.Image, quad: Quad) -> None:
    """Warp ``patch`` (RGBA; alpha 0 is see-through) onto the corners ``quad`` of ``canvas``."""
    width, height = canvas.size
    xs, ys = [p[0] for p in quad], [p[1] for p in quad]
    left, top = max(0, int(np.floor(min(xs)))), max(0, int(np.floor(min(ys))))
    right, bottom = min(width, int(np.ceil(max(xs)))), min(height, int(np.ceil(max(ys))))
    pixels = np.asarray(patch.convert("RGBA"))
    # Bilinear warping samples without an area filter: shrink first, or fine modules alias.
    longest = max(
        np.hypot(quad[i][0] - quad[i - 1][0], quad[i][1] - quad[i - 1][1]) for i in range(4)
    )
    shrink = longest / max(patch.size)
    if shrink < 0.8:
        target = (max(2, round(patch.size[0] * shrink)), max(2, round(patch.size[1] * shrink)))
        pixels = cv2.resize(pixels, target, interpolation=cv2.INTER_AREA)
    ph, pw = pixels.shape[:2]
    source = np.array([(0, 0), (pw, 0), (pw, ph), (0, ph)], np.float32)
    local = np.array([(x - left, y - top) for x, y in quad], np.float32)
    matrix = cv2.getPerspectiveTransform(source, local)
    size = (right - left, bottom - top)
    # Colour and coverage are warped apart: colour repeats its edge outwards, so the blend at
    # the border mixes the patch's own colour with the canvas, not with black.
    colour = cv2.warpPerspective(
        np.ascontiguousarray(pixels[..., :3]),
        matrix,
        size,
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_REPLICATE,
    )
    cover = cv2.warpPerspective(
        np.ascontiguousarray(pixels[..., 3]),
        matrix,
        size,
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=(0,),
    )
    canvas.paste(Image.fromarray(colour), (left, top), Image.fromarray(cover))


def contrasting(canvas: Image.Image, box: tuple[int, int, int, int], rng: random.Random) -> RGB:
    """A text colour that reads on the part of ``canvas`` under ``box``."""
    mean = ImageStat.Stat(canvas.crop(box).convert("L")).mean[0]
    return dark_colour(rng) if mean > 127 else light_colour(rng)


def text_patch(
    lines: Sequence[str],
    typeface: ImageFont.FreeTypeFont,
    fill: RGB,
    *,
    style: str,
    backing: RGB,
    align: str = "left",
) -> Image.Image:
    """Lines of text on a transparent RGBA patch; ``style`` is plain, outline, shadow or box
    (a rounded panel of ``backing`` behind the text)."""
    text = "\n".join(lines)
    probe = ImageDraw.Draw(Image.new("RGBA", (1, 1)))
    px = round(typeface.size)
    stroke = max(1, px // 12) if style == "outline" else 0
    left, top, right, bottom = probe.multiline_textbbox(
        (0, 0), text, font=typeface, stroke_width=stroke, align=align
    )
    pad = max(4, px // 3)
    size = (int(np.ceil(right - left)) + 2 * pad, int(np.ceil(bottom - top)) + 2 * pad)
    patch = Image.new("RGBA", size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(patch)
    origin = (pad - left, pad - top)
    if style == "box":
        draw.rounded_rectangle((0, 0, size[0] - 1, size[1] - 1), radius=pad, fill=(*backing, 215))
    if style == "shadow":
        offset = max(1, px // 16)
        shadow_at = (origin[0] + offset, origin[1] + offset)
        draw.multiline_text(shadow_at, text, font=typeface, fill=(*backing, 200), align=align)
    draw.multiline_text(
        origin,
        text,
        font=typeface,
        fill=(*fill, 255),
        stroke_width=stroke,
        stroke_fill=(*backing, 255),
        align=align,
    )
    return patch


def place_text(
    canvas: Image.Image,
    lines: Sequence[str],
    typeface: ImageFont.FreeTypeFont,
    rng: random.Random,
    *,
    max_angle: float = 0.0,
) -> tuple[int, int, int, int]:
    """Draw ``lines`` somewhere on ``canvas`` in a colour and style that stay readable, tilted
    by up to ``max_angle`` degrees now and then; returns the box drawn into."""
    style = rng.choice(("plain", "outline", "shadow", "box"))
    angle = rng.uniform(-max_angle, max_angle) if max_angle and rng.random() < 0.4 else 0.0

    def shaped(fill: RGB, backing: RGB) -> Image.Image:
        patch = text_patch(lines, typeface, fill, style=style, backing=backing)
        if angle:
            patch = patch.rotate(angle, expand=True, resample=Image.Resampling.BICUBIC)
        width, height = canvas.size
        fit = min(1.0, (width - 8) / patch.size[0], (height - 8) / patch.size[1])
        if fit < 1.0:
            fitted = (max(1, int(patch.size[0] * fit)), max(1, int(patch.size[1] * fit)))
            patch = patch.resize(fitted, Image.Resampling.LANCZOS)
        return patch

    # The patch's size does not depend on its colours, which depend on where it lands.
    box_w, box_h = shaped((0, 0, 0), (0, 0, 0)).size
    left = rng.randint(4, canvas.size[0] - 4 - box_w)
    top = rng.randint(4, canvas.size[1] - 4 - box_h)
    box = (left, top, left + box_w, top + box_h)
    fill = contrasting(canvas, box, rng)
    backing = light_colour(rng) if sum(fill) < 384 else dark_colour(rng)
    patch = shaped(fill, backing)
    canvas.paste(patch.convert("RGB"), (left, top), patch.getchannel("A"))
    return box


def wrap(text: str, typeface: ImageFont.FreeTypeFont, width: int) -> list[str]:
    """Greedy word wrap to about ``width`` pixels (word widths add up, kerning aside)."""
    space = typeface.getlength(" ")
    widths: dict[str, float] = {}
    lines: list[str] = []
    current: list[str] = []
    used = 0.0
    for word in text.split():
        if word not in widths:
            widths[word] = typeface.getlength(word)
        extra = widths[word] + (space if current else 0.0)
        if current and used + extra > width:
            lines.append(" ".join(current))
            current, used = [word], widths[word]
        else:
            current.append(word)
            used += extra
    if current:
        lines.append(" ".join(current))
    return lines


def finish(image: Image.Image, rng: random.Random) -> tuple[bytes, str]:
    """The shared last step of every demo image, whatever its label: sometimes a slight blur,
    then JPEG at quality 30-95 or, one time in seven, PNG. Returns the bytes and the suffix."""
    if rng.random() < 0.4:
        # OpenCV's Gaussian blur is about ten times faster than Pillow's here.
        sigma = rng.uniform(0.3, 1.3)
        image = Image.fromarray(cv2.GaussianBlur(np.asarray(image), (0, 0), sigma))
    out = io.BytesIO()
    if rng.random() < 1 / 7:
        # Fast compression: PNG is lossless at any level, and level 6 triples the time.
        image.save(out, format="PNG", compress_level=1)
        return out.getvalue(), "png"
    image.save(out, format="JPEG", quality=rng.randint(30, 95))
    return out.getvalue(), "jpg"
