"""Decoding, limits and fetching of images, with inputs generated in memory."""

from __future__ import annotations

import base64
import functools
import io
import struct
import time
import zlib
from collections.abc import Callable

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageOps

from consumer.contract.reasons import ReasonCode
from consumer.errors import ImageRejected
from consumer.imaging.decode import (
    ALLOWED_FORMATS,
    DecodedImage,
    ImageLimits,
    decode_base64,
    decode_image,
    decode_memory_bytes,
    sample_indices,
)
from consumer.imaging.headers import MAX_PNG_TEXT_BYTES, declared_size, without_unused_png_text
from consumer.runtime.settings import ImagingSettings, MiB

SIZE = 224
LIMITS = ImageLimits(max_bytes=32 * 1024 * 1024, max_pixels=64_000_000)
RED = (255, 0, 0)
GREEN = (0, 255, 0)
BLUE = (0, 0, 255)
WHITE = (255, 255, 255)


def encode(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def rejection_code(data: bytes, limits: ImageLimits = LIMITS) -> str:
    with pytest.raises(ImageRejected) as info:
        decode_image(data, SIZE, limits)
    assert info.value.code in set(ReasonCode)
    return info.value.code


def assert_close(pixel: npt.NDArray[np.uint8], expected: tuple[int, int, int], tol: int) -> None:
    diff = np.abs(pixel.astype(int) - np.array(expected))
    assert diff.max() <= tol, f"{pixel.tolist()} is not within {tol} of {expected}"


def photo(width: int, height: int) -> Image.Image:
    """A smooth colour image that JPEG encodes at a realistic size."""
    x = np.linspace(0, 255, width, dtype=np.float32)
    y = np.linspace(0, 255, height, dtype=np.float32)
    red = np.broadcast_to(x[None, :], (height, width))
    green = np.broadcast_to(y[:, None], (height, width))
    blue = (red + green) / 2
    return Image.fromarray(np.stack([red, green, blue], axis=-1).astype(np.uint8))


def halves(mode: str, left: object, right: object, size: tuple[int, int] = (64, 32)) -> Image.Image:
    image = Image.new(mode, size, left)  # type: ignore[arg-type]
    image.paste(right, (size[0] // 2, 0, size[0], size[1]))  # type: ignore[arg-type]
    return image


def png_with_header(width: int, height: int) -> bytes:
    """A valid-looking PNG that declares width x height but carries a few bytes of pixels."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        crc = zlib.crc32(kind + payload) & 0xFFFFFFFF
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )


# --- output contract and draft mode -------------------------------------------------------


def test_twelve_megapixel_jpeg_is_drafted_and_resized() -> None:
    data = encode(photo(4000, 3000), "JPEG", quality=90)

    decoded = decode_image(data, SIZE, LIMITS)

    assert decoded.pixels.shape == (SIZE, SIZE, 3)
    assert decoded.pixels.dtype == np.uint8
    assert decoded.pixels.flags.c_contiguous
    assert (decoded.source_width, decoded.source_height) == (4000, 3000)
    assert decoded.source_format == "JPEG"
    assert decoded.draft_scale == 8
    assert decoded.decode_seconds > 0
    # The gradient survives: left is dark red, right is bright red.
    assert decoded.pixels[SIZE // 2, 2, 0] < 20
    assert decoded.pixels[SIZE // 2, SIZE - 3, 0] > 235


@pytest.mark.parametrize(
    ("width", "height", "scale"),
    [(224, 224, 1), (500, 500, 2), (1000, 900, 4), (1800, 1800, 8), (12000, 1000, 4)],
)
def test_draft_scale_keeps_both_sides_at_least_the_target(
    width: int, height: int, scale: int
) -> None:
    decoded = decode_image(encode(photo(width, height), "JPEG"), SIZE, LIMITS)
    assert decoded.draft_scale == scale
    assert decoded.pixels.shape == (SIZE, SIZE, 3)


def test_non_jpeg_is_not_drafted_and_aspect_is_not_kept() -> None:
    image = halves("RGB", RED, BLUE, size=(400, 100))
    decoded = decode_image(encode(image, "PNG"), SIZE, LIMITS)
    assert decoded.draft_scale == 1
    assert (decoded.source_width, decoded.source_height) == (400, 100)
    # Stretched, not letterboxed: colour reaches every edge.
    assert_close(decoded.pixels[0, 0], RED, 0)
    assert_close(decoded.pixels[SIZE - 1, SIZE - 1], BLUE, 0)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF"])
def test_every_allowed_format_decodes(fmt: str) -> None:
    decoded = decode_image(encode(Image.new("RGB", (40, 30), (30, 140, 220)), fmt), SIZE, LIMITS)
    assert decoded.source_format == fmt
    assert_close(decoded.pixels[SIZE // 2, SIZE // 2], (30, 140, 220), 6)


# --- orientation ------------------------------------------------------------------------


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_matches_pillow_exif_transpose(orientation: int) -> None:
    # Red top-left corner on blue: every orientation moves it somewhere else.
    image = Image.new("RGB", (200, 100), BLUE)
    image.paste(RED, (0, 0, 60, 40))
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = encode(image, "JPEG", exif=exif, quality=95)

    decoded = decode_image(data, SIZE, LIMITS)

    reference = ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB")
    expected = np.asarray(reference.resize((SIZE, SIZE), Image.Resampling.BILINEAR))
    assert np.abs(decoded.pixels.astype(int) - expected.astype(int)).max() <= 2
    swapped = orientation >= 5
    assert (decoded.source_width, decoded.source_height) == ((100, 200) if swapped else (200, 100))


def test_exif_rotation_moves_the_corner() -> None:
    image = Image.new("RGB", (200, 100), BLUE)
    image.paste(RED, (0, 0, 60, 40))
    exif = Image.Exif()
    exif[0x0112] = 6  # displayed rotated 90 degrees clockwise
    decoded = decode_image(encode(image, "JPEG", exif=exif), SIZE, LIMITS)
    assert_close(decoded.pixels[5, SIZE - 6], RED, 40)
    assert_close(decoded.pixels[5, 5], BLUE, 40)


def test_exif_orientation_on_a_drafted_jpeg() -> None:
    image = photo(2400, 1200)
    image.paste(WHITE, (0, 0, 300, 300))
    exif = Image.Exif()
    exif[0x0112] = 8  # displayed rotated 90 degrees counter-clockwise
    decoded = decode_image(encode(image, "JPEG", exif=exif), SIZE, LIMITS)
    assert decoded.draft_scale == 4
    assert (decoded.source_width, decoded.source_height) == (1200, 2400)
    assert_close(decoded.pixels[SIZE - 5, 5], WHITE, 30)


# --- modes ------------------------------------------------------------------------------


def test_cmyk_jpeg() -> None:
    decoded = decode_image(
        encode(Image.new("CMYK", (64, 64), (0, 255, 255, 0)), "JPEG"), SIZE, LIMITS
    )
    assert_close(decoded.pixels[SIZE // 2, SIZE // 2], RED, 8)


def test_sixteen_bit_png_keeps_its_range() -> None:
    ramp = np.linspace(0, 65535, 256).round().astype(np.uint16)
    image = Image.fromarray(np.tile(ramp, (16, 1)))
    data = encode(image, "PNG")
    assert Image.open(io.BytesIO(data)).mode.startswith("I;16")

    pixels = decode_image(data, 256, LIMITS).pixels

    row = pixels[8, :, 0].astype(int)
    assert row[0] <= 1
    assert row[-1] >= 254
    assert (np.diff(row) >= 0).all()
    # Mid-grey stays mid-grey: scaled by the 16-bit range, not clipped at 255.
    assert abs(row[128] - 128) <= 2
    assert (pixels[..., 0] == pixels[..., 1]).all()


def test_rgba_is_composited_over_white() -> None:
    image = halves("RGBA", (255, 0, 0, 0), (0, 255, 0, 255))
    image.paste((0, 0, 0, 128), (0, 0, 16, 32))
    decoded = decode_image(encode(image, "PNG"), SIZE, LIMITS)
    assert_close(decoded.pixels[SIZE // 2, SIZE // 8], (127, 127, 127), 2)
    assert_close(decoded.pixels[SIZE // 2, 3 * SIZE // 8], WHITE, 0)
    assert_close(decoded.pixels[SIZE // 2, 3 * SIZE // 4], GREEN, 0)


def test_gray_with_alpha_is_composited_over_white() -> None:
    image = halves("LA", (0, 0), (0, 255))
    decoded = decode_image(encode(image, "PNG"), SIZE, LIMITS)
    assert_close(decoded.pixels[SIZE // 2, 10], WHITE, 0)
    assert_close(decoded.pixels[SIZE // 2, SIZE - 10], (0, 0, 0), 0)


@pytest.mark.parametrize("fmt", ["PNG", "GIF"])
def test_palette_transparency_is_white(fmt: str) -> None:
    image = halves("P", 0, 1)
    image.putpalette([*RED, *BLUE] + [0] * 762)
    decoded = decode_image(encode(image, fmt, transparency=0), SIZE, LIMITS)
    assert_close(decoded.pixels[SIZE // 2, 10], WHITE, 0)
    assert_close(decoded.pixels[SIZE // 2, SIZE - 10], BLUE, 0)


def test_palette_without_transparency() -> None:
    image = halves("P", 0, 1)
    image.putpalette([*RED, *BLUE] + [0] * 762)
    decoded = decode_image(encode(image, "PNG"), SIZE, LIMITS)
    assert_close(decoded.pixels[SIZE // 2, 10], RED, 0)


def test_grayscale() -> None:
    decoded = decode_image(encode(Image.new("L", (50, 50), 77), "PNG"), SIZE, LIMITS)
    assert decoded.pixels.shape == (SIZE, SIZE, 3)
    assert_close(decoded.pixels[0, 0], (77, 77, 77), 0)


def test_grayscale_jpeg() -> None:
    decoded = decode_image(encode(Image.new("L", (900, 900), 77), "JPEG"), SIZE, LIMITS)
    assert decoded.draft_scale == 4
    assert_close(decoded.pixels[SIZE // 2, SIZE // 2], (77, 77, 77), 2)


@pytest.mark.parametrize("fmt", ["PNG", "BMP", "TIFF"])
def test_one_bit(fmt: str) -> None:
    decoded = decode_image(encode(halves("1", 0, 1), fmt), SIZE, LIMITS)
    assert_close(decoded.pixels[SIZE // 2, 10], (0, 0, 0), 0)
    assert_close(decoded.pixels[SIZE // 2, SIZE - 10], WHITE, 0)


def test_sixteen_bit_tiff() -> None:
    image = Image.fromarray(np.full((20, 20), 65535, dtype=np.uint16))
    decoded = decode_image(encode(image, "TIFF"), SIZE, LIMITS)
    assert_close(decoded.pixels[0, 0], WHITE, 1)


def test_float_tiff_in_unit_range() -> None:
    image = Image.fromarray(np.full((20, 20), 0.5, dtype=np.float32))
    decoded = decode_image(encode(image, "TIFF"), SIZE, LIMITS)
    assert_close(decoded.pixels[0, 0], (128, 128, 128), 1)


@pytest.mark.parametrize(
    ("fmt", "options"), [("GIF", {}), ("PNG", {}), ("WEBP", {"lossless": True})]
)
def test_animated_images_sample_every_frame_up_to_the_limit(
    fmt: str, options: dict[str, object]
) -> None:
    frames = [Image.new("RGB", (32, 32), colour) for colour in (RED, GREEN, BLUE)]
    data = encode(frames[0], fmt, save_all=True, append_images=frames[1:], duration=100, **options)
    assert getattr(Image.open(io.BytesIO(data)), "n_frames", 1) == 3

    decoded = decode_image(data, SIZE, LIMITS)

    assert decoded.source_frames == 3
    assert decoded.frames.shape == (3, SIZE, SIZE, 3)
    assert_close(decoded.pixels[SIZE // 2, SIZE // 2], RED, 2)
    for frame, colour in zip(decoded.frames, (RED, GREEN, BLUE), strict=True):
        assert_close(frame[SIZE // 2, SIZE // 2], colour, 2)


def test_long_animation_is_sampled_evenly_including_the_last_frame() -> None:
    colours = [(i * 12, 0, 0) for i in range(20)]
    frames = [Image.new("RGB", (16, 16), colour) for colour in colours]
    data = encode(frames[0], "PNG", save_all=True, append_images=frames[1:], duration=50)

    decoded = decode_image(data, SIZE, ImageLimits(max_bytes=10**7, max_pixels=10**7))

    assert decoded.frames.shape[0] == 4
    reds = [int(frame[0, 0, 0]) for frame in decoded.frames]
    assert reds == [colours[i][0] for i in sample_indices(20, 4)] == [0, 72, 156, 228]


def test_sample_indices() -> None:
    assert sample_indices(1, 4) == [0]
    assert sample_indices(3, 4) == [0, 1, 2]
    assert sample_indices(10, 1) == [0]
    assert sample_indices(100, 4) == [0, 33, 66, 99]


def test_too_many_frames_is_refused() -> None:
    frames = [Image.new("RGB", (8, 8), (i, i, i)) for i in range(12)]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=20)
    limits = ImageLimits(max_bytes=10**7, max_pixels=10**7, max_frames=10)
    with pytest.raises(ImageRejected) as info:
        decode_image(data, SIZE, limits)
    assert info.value.code == "image_too_many_frames"


def test_animation_whose_frames_add_up_to_a_bomb_is_refused() -> None:
    frames = [Image.new("RGB", (100, 100), (i, 0, 0)) for i in range(50)]
    data = encode(frames[0], "PNG", save_all=True, append_images=frames[1:], duration=20)
    # Each frame is within max_pixels, but reaching the last one decodes all fifty.
    limits = ImageLimits(max_bytes=10**7, max_pixels=20_000, sample_frames=4)
    with pytest.raises(ImageRejected) as info:
        decode_image(data, SIZE, limits)
    assert info.value.code == "image_too_many_pixels"


# --- rejections -------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "GIF", "WEBP"])
def test_truncated_image_is_corrupt(fmt: str) -> None:
    data = encode(photo(300, 200), fmt)
    assert rejection_code(data[: len(data) // 2]) == "image_corrupt"


def test_truncated_image_does_not_change_pillow_globals() -> None:
    from PIL import ImageFile

    data = encode(photo(300, 200), "JPEG")
    rejection_code(data[:-200])
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_empty() -> None:
    assert rejection_code(b"") == "image_empty"


def test_not_an_image() -> None:
    assert rejection_code(b"<html>certainly not an image</html>") == "image_unsupported_format"


def test_random_bytes() -> None:
    data = np.random.default_rng(7).integers(0, 256, 10_000, dtype=np.uint8).tobytes()
    assert rejection_code(data) in {"image_unsupported_format", "image_corrupt"}


@pytest.mark.parametrize("fmt", ["ICO", "PCX", "TGA", "PPM"])
def test_formats_outside_the_allowlist_are_refused(fmt: str) -> None:
    data = encode(Image.new("RGB", (32, 32), RED), fmt)
    assert rejection_code(data) == "image_unsupported_format"


def test_huge_declared_png_is_refused_from_the_header() -> None:
    started = time.perf_counter()
    assert rejection_code(png_with_header(100_000, 100_000)) == "image_too_many_pixels"
    assert time.perf_counter() - started < 1


@pytest.mark.parametrize(
    ("data", "declared"),
    [
        (png_with_header(100_000, 100_000), "100000x100000 = 10000000000 pixels"),
        (png_with_header(12_000, 12_000), "12000x12000 = 144000000 pixels"),
        (png_with_header(9_000, 8_000), "9000x8000 = 72000000 pixels"),
    ],
)
def test_pixel_refusal_states_the_configured_limit_and_the_declared_size(
    data: bytes, declared: str
) -> None:
    # Past twice Pillow's own guard, past it, and under it: the first two are stopped inside
    # Image.open, before our check; the text must not quote Pillow's internal limits.
    with pytest.raises(ImageRejected) as info:
        decode_image(data, SIZE, LIMITS)
    assert info.value.code == "image_too_many_pixels"
    assert info.value.message == f"image is {declared}, over the limit of {LIMITS.max_pixels}"
    assert "178956970" not in info.value.message  # Pillow's own limit, as reported


def test_declared_size_reads_the_header_past_pillows_guard() -> None:
    def declared(data: bytes) -> tuple[int, int] | None:
        return declared_size(data, ALLOWED_FORMATS)

    assert declared(png_with_header(100_000, 90_000)) == (100_000, 90_000)
    assert declared(encode(Image.new("RGB", (40, 30)), "GIF")) == (40, 30)
    assert declared(b"not an image") is None


@pytest.mark.parametrize(
    "warning_action",
    [
        pytest.param(
            "ignored",
            marks=pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning"),
        ),
        pytest.param(
            "raised",
            marks=pytest.mark.filterwarnings("error::PIL.Image.DecompressionBombWarning"),
        ),
    ],
)
def test_declared_pixels_over_our_limit_but_under_pillows(warning_action: str) -> None:
    # 12000 x 12000 is past the configured limit but only warns in Pillow's own check.
    assert rejection_code(png_with_header(12_000, 12_000)) == "image_too_many_pixels"


def test_small_pixel_limit() -> None:
    limits = ImageLimits(max_bytes=LIMITS.max_bytes, max_pixels=99 * 100)
    data = encode(Image.new("RGB", (100, 100)), "PNG")
    assert rejection_code(data, limits) == "image_too_many_pixels"
    ok = ImageLimits(max_bytes=LIMITS.max_bytes, max_pixels=100 * 100)
    assert decode_image(data, SIZE, ok).pixels.shape == (SIZE, SIZE, 3)


def test_bytes_over_the_cap() -> None:
    data = encode(photo(100, 100), "PNG")
    limits = ImageLimits(max_bytes=len(data) - 1, max_pixels=LIMITS.max_pixels)
    assert rejection_code(data, limits) == "image_too_large"


def test_limits_from_settings() -> None:
    limits = ImageLimits.from_settings(ImagingSettings(max_image_bytes=5000, max_pixels=77))
    assert limits == ImageLimits(max_bytes=5000, max_pixels=77)
    custom = ImagingSettings(max_decode_bytes=100 * MiB)
    assert ImageLimits.from_settings(custom).max_decode_bytes == 100 * MiB


def test_rejections_chain_the_pillow_error() -> None:
    data = encode(photo(300, 200), "PNG")
    with pytest.raises(ImageRejected) as info:
        decode_image(data[:-100], SIZE, LIMITS)
    assert info.value.__cause__ is not None
    assert "truncated" in info.value.message


# --- base64 -----------------------------------------------------------------------------


def test_base64_round_trip() -> None:
    data = encode(Image.new("RGB", (8, 8), RED), "PNG")
    assert decode_base64(base64.b64encode(data).decode(), LIMITS) == data


@pytest.mark.parametrize(
    "text", ["abc$", "YWJj\nZGVm", "YWJjZA", "YW=Jj", "é===", "data:image/png;base64,AAAA"]
)
def test_invalid_base64(text: str) -> None:
    with pytest.raises(ImageRejected) as info:
        decode_base64(text, LIMITS)
    assert info.value.code == "invalid_base64"


@pytest.mark.parametrize("text", ["A" * 100, "A" * 99 + "=", "A" * 98 + "=="])
def test_base64_at_the_cap_decodes(text: str) -> None:
    limits = ImageLimits(max_bytes=75, max_pixels=LIMITS.max_pixels)
    assert len(decode_base64(text, limits)) <= 75


def test_base64_over_the_cap_is_refused_before_decoding() -> None:
    limits = ImageLimits(max_bytes=75, max_pixels=LIMITS.max_pixels)
    # Invalid throughout: only a size check made before decoding can report it as too large.
    with pytest.raises(ImageRejected) as info:
        decode_base64("$" * 104, limits)
    assert info.value.code == "image_too_large"


# --- property-based ---------------------------------------------------------------------

SEEDS = [
    encode(photo(40, 30), "JPEG"),
    encode(photo(40, 30), "PNG"),
    encode(halves("P", 0, 1), "GIF", transparency=0),
    encode(photo(40, 30), "WEBP"),
    encode(photo(20, 10), "BMP"),
    encode(photo(20, 10), "TIFF"),
]


def _outcome(data: bytes) -> DecodedImage | str:
    try:
        return decode_image(data, 32, LIMITS)
    except ImageRejected as exc:
        code = exc.code
    assert code in set(ReasonCode)
    return code


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2048))
def test_arbitrary_bytes_only_raise_image_rejected(data: bytes) -> None:
    _outcome(data)


# Pillow warns about some damage (bad TIFF tags, corrupt EXIF, headers claiming many pixels)
# before decoding or refusing it.
@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.sampled_from(SEEDS),
    edits=st.lists(st.tuples(st.integers(min_value=0), st.integers(0, 255)), max_size=8),
    cut=st.integers(min_value=0),
)
def test_damaged_images_only_raise_image_rejected(
    seed: bytes, edits: list[tuple[int, int]], cut: int
) -> None:
    damaged = bytearray(seed)
    for position, value in edits:
        damaged[position % len(damaged)] = value
    outcome = _outcome(bytes(damaged[: len(damaged) - cut % len(damaged)]))
    if isinstance(outcome, DecodedImage):
        assert outcome.pixels.shape == (32, 32, 3)


# --- metadata chunks ----------------------------------------------------------------------


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    crc = zlib.crc32(kind + payload) & 0xFFFFFFFF
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)


def with_chunks(png: bytes, *chunks: bytes) -> bytes:
    """``png`` with ``chunks`` inserted right after IHDR (before the pixels)."""
    after_ihdr = 8 + 12 + struct.unpack(">I", png[8:12])[0]
    return png[:after_ihdr] + b"".join(chunks) + png[after_ihdr:]


def ztxt(keyword: bytes, text: bytes) -> bytes:
    return png_chunk(b"zTXt", keyword + b"\0\0" + zlib.compress(text, 9))


def itxt(keyword: bytes, text: bytes, *, compressed: bool) -> bytes:
    body = zlib.compress(text, 9) if compressed else text
    return png_chunk(b"iTXt", keyword + b"\0" + bytes([int(compressed), 0]) + b"\0\0" + body)


def xmp(orientation: int) -> bytes:
    return (
        b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF><rdf:Description '
        b'xmlns:tiff="http://ns.adobe.com/tiff/1.0/" tiff:Orientation="'
        + str(orientation).encode()
        + b'"/></rdf:RDF></x:xmpmeta>'
    )


RED_BLUE = encode(halves("RGB", RED, BLUE, size=(200, 100)), "PNG")


@functools.cache
def caption() -> bytes:
    """Random text compresses to about its own size: a 5 MB compressed chunk, as reported."""
    return np.random.default_rng(3).integers(0, 256, 5_000_000, dtype=np.uint8).tobytes()


# Built when the test runs, not at collection: compressing them takes a moment.
TEXT_CHUNKS: dict[str, Callable[[], bytes]] = {
    "5MB-zTXt": lambda: ztxt(b"Comment", caption()),
    "5MB-iTXt": lambda: itxt(b"Description", caption(), compressed=True),
    "5MB-tEXt": lambda: png_chunk(b"tEXt", b"Comment\0" + caption()),
    # 50 MB of text in 50 kB: far past any bound on inflated text.
    "zip-bomb-zTXt": lambda: ztxt(b"Comment", b"\0" * 50_000_000),
    "zip-bomb-XMP": lambda: itxt(b"XML:com.adobe.xmp", b" " * 50_000_000, compressed=True),
}


@pytest.mark.parametrize("name", TEXT_CHUNKS)
def test_large_text_chunks_do_not_make_a_png_undecidable(name: str) -> None:
    data = with_chunks(RED_BLUE, TEXT_CHUNKS[name]())
    assert len(data) <= LIMITS.max_bytes

    started = time.perf_counter()
    decoded = decode_image(data, SIZE, LIMITS)

    assert time.perf_counter() - started < 2
    plain = decode_image(RED_BLUE, SIZE, LIMITS)
    assert np.array_equal(decoded.pixels, plain.pixels)
    assert (decoded.source_width, decoded.source_height) == (200, 100)


@pytest.mark.parametrize(
    "chunk",
    [
        itxt(b"XML:com.adobe.xmp", xmp(6), compressed=False),
        itxt(b"XML:com.adobe.xmp", xmp(6), compressed=True),
    ],
)
def test_xmp_orientation_in_a_png_text_chunk_is_still_applied(chunk: bytes) -> None:
    data = with_chunks(RED_BLUE, ztxt(b"Comment", caption()), chunk)

    decoded = decode_image(data, SIZE, LIMITS)

    assert (decoded.source_width, decoded.source_height) == (100, 200)
    # Rotated 90 degrees clockwise: red (left) is now on top.
    assert_close(decoded.pixels[5, SIZE // 2], RED, 0)
    assert_close(decoded.pixels[SIZE - 5, SIZE // 2], BLUE, 0)


def test_only_unused_text_chunks_are_dropped() -> None:
    kept = itxt(b"XML:com.adobe.xmp", xmp(3), compressed=True)
    oversized = itxt(b"XML:com.adobe.xmp", b" " * (MAX_PNG_TEXT_BYTES + 1), compressed=True)
    data = with_chunks(RED_BLUE, png_chunk(b"tEXt", b"Author\0me"), kept, oversized)

    stripped = without_unused_png_text(data)

    assert stripped == with_chunks(RED_BLUE, kept)
    assert without_unused_png_text(RED_BLUE) is RED_BLUE
    truncated = data[: len(data) // 2]
    assert without_unused_png_text(truncated).startswith(RED_BLUE[:33])


def test_a_corrupt_png_with_text_is_still_corrupt() -> None:
    data = with_chunks(RED_BLUE, ztxt(b"Comment", caption()))
    assert rejection_code(data[: len(data) - 60]) == "image_corrupt"


# --- decode memory --------------------------------------------------------------------------


def test_an_image_whose_decode_needs_more_memory_than_allowed_is_refused() -> None:
    # 2.5 kB of WebP that libwebp decodes through 16 bytes a pixel: about 1 GB.
    data = encode(Image.new("RGB", (8000, 8000), BLUE), "WEBP", lossless=True)
    assert len(data) < 10_000

    with pytest.raises(ImageRejected) as info:
        decode_image(data, SIZE, LIMITS)

    assert info.value.code == "image_too_many_pixels"
    assert "decode memory limit" in info.value.message
    assert f"{LIMITS.max_decode_bytes // MiB} MiB" in info.value.message


@pytest.mark.parametrize(
    ("fmt", "mode", "size", "admitted"),
    [
        ("JPEG", "RGB", (8000, 8000), True),  # drafted: decoded at 1/8 scale
        ("PNG", "L", (8000, 8000), True),
        ("PNG", "I;16", (8000, 8000), True),
        ("PNG", "RGB", (8000, 5800), True),
        ("TIFF", "CMYK", (8000, 5800), True),
        ("PNG", "RGBA", (8000, 8000), False),
        ("WEBP", "RGB", (3400, 3400), True),
        ("WEBP", "RGB", (4000, 4000), False),
    ],
)
def test_what_the_default_decode_memory_limit_admits(
    fmt: str, mode: str, size: tuple[int, int], admitted: bool
) -> None:
    with Image.new(mode, (1, 1)) as image:
        image._size = size  # the header of a large image, without its pixels
        if fmt == "JPEG":
            image._size = (size[0] // 8, size[1] // 8)
        needed = decode_memory_bytes(image, fmt, animated=False, data=LIMITS.max_bytes // 2)
    default = ImagingSettings().max_decode_bytes
    assert (needed <= default) is admitted


def test_base64_padding_beyond_the_last_quantum_is_refused() -> None:
    from consumer.imaging.decode import decode_base64

    limits = ImageLimits(max_bytes=1 << 20, max_pixels=1 << 20)
    assert decode_base64("QUJD", limits) == b"ABC"
    with pytest.raises(ImageRejected) as info:
        decode_base64("QUJD====", limits)
    assert info.value.code == ReasonCode.INVALID_BASE64
