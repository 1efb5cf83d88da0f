"""Decoding, limits and fetching of images, with inputs generated in memory."""

from __future__ import annotations

import base64
import io
import struct
import threading
import time
import zlib
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageOps

from bench.local.process import free_port
from consumer.contract.reasons import ReasonCode
from consumer.errors import ImageRejected
from consumer.imaging.decode import (
    DecodedImage,
    ImageLimits,
    decode_base64,
    decode_image,
    sample_indices,
)
from consumer.imaging.fetch import ImageFetcher
from consumer.runtime.settings import ImagingSettings

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


# --- fetching ---------------------------------------------------------------------------

IMAGE = encode(Image.new("RGB", (16, 16), RED), "PNG")
CAP = 256 * 1024
STREAM_TOTAL = 64 * 1024 * 1024


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.hits: Counter[str] = Counter()
        self.streamed = 0
        self.stream_done = threading.Event()

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _reply(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        path = self.path
        self.server.hits[path.split("?")[0]] += 1
        if path == "/set-cookie":
            self._reply(302, headers={"Location": "/echo-cookie", "Set-Cookie": "session=abc"})
        elif path == "/echo-cookie":
            self._reply(200, self.headers.get("Cookie", "").encode())
        elif path.startswith("/image.png"):
            self._reply(200, IMAGE, {"Content-Type": "image/png"})
        elif path == "/missing":
            self._reply(404, b"no")
        elif path == "/unavailable":
            self._reply(503, b"later")
        elif path.startswith("/hop/"):
            remaining = int(path.rsplit("/", 1)[1])
            target = f"/hop/{remaining - 1}" if remaining > 1 else "/image.png"
            self._reply(302, headers={"Location": target})
        elif path == "/to-ftp":
            self._reply(302, headers={"Location": "ftp://127.0.0.1/image.png"})
        elif path == "/to-metadata":
            self._reply(302, headers={"Location": "http://169.254.169.254/latest/meta-data/"})
        elif path == "/declared-huge":
            self.send_response(200)
            self.send_header("Content-Length", str(10**9))
            self.end_headers()
        elif path == "/stream":
            self._stream()
        elif path == "/slow":
            time.sleep(1.5)
            self._reply(200, IMAGE)
        elif path == "/drip":
            self.send_response(200)
            self.send_header("Content-Length", "1000")
            self.end_headers()
            try:
                for _ in range(1000):
                    self.wfile.write(b"x")
                    self.wfile.flush()
                    time.sleep(0.05)
            except OSError:
                pass
        else:
            self._reply(500, b"unknown route")

    def _stream(self) -> None:
        # No Content-Length: the body ends when the connection closes.
        self.send_response(200)
        self.send_header("Connection", "close")
        self.end_headers()
        chunk = b"\0" * 65536
        try:
            while self.server.streamed < STREAM_TOTAL:
                self.wfile.write(chunk)
                self.server.streamed += len(chunk)
        except OSError:
            pass
        finally:
            self.server.stream_done.set()


@pytest.fixture
def server() -> Iterator[_Server]:
    httpd = _Server()
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield httpd
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


FETCH_SETTINGS = ImagingSettings(
    max_image_bytes=CAP,
    fetch_connect_timeout_s=0.5,
    fetch_read_timeout_s=0.3,
    fetch_max_redirects=2,
    fetch_allow_networks=["127.0.0.1/32"],
)


@pytest.fixture
async def fetcher() -> AsyncIterator[ImageFetcher]:
    async with ImageFetcher(FETCH_SETTINGS, retry_backoff_s=0.01) as client:
        yield client


async def fetch_code(fetcher: ImageFetcher, url: str) -> str:
    with pytest.raises(ImageRejected) as info:
        await fetcher.fetch(url)
    assert info.value.code in set(ReasonCode)
    return info.value.code


async def test_fetch_ok(server: _Server, fetcher: ImageFetcher) -> None:
    data = await fetcher.fetch(f"{server.base}/image.png")
    assert data == IMAGE
    assert decode_image(data, SIZE, LIMITS).pixels.shape == (SIZE, SIZE, 3)


async def test_fetch_404_is_not_retried(server: _Server, fetcher: ImageFetcher) -> None:
    assert await fetch_code(fetcher, f"{server.base}/missing") == "image_fetch_http_4xx"
    assert server.hits["/missing"] == 1


async def test_fetch_5xx_is_retried_then_rejected(server: _Server, fetcher: ImageFetcher) -> None:
    assert await fetch_code(fetcher, f"{server.base}/unavailable") == "image_fetch_http_5xx"
    assert server.hits["/unavailable"] == 3


async def test_redirects_within_the_limit(server: _Server, fetcher: ImageFetcher) -> None:
    assert await fetcher.fetch(f"{server.base}/hop/2") == IMAGE


async def test_redirects_over_the_limit(server: _Server, fetcher: ImageFetcher) -> None:
    assert await fetch_code(fetcher, f"{server.base}/hop/3") == "image_fetch_redirects"
    assert server.hits["/image.png"] == 0


async def test_no_redirects_allowed(server: _Server) -> None:
    settings = FETCH_SETTINGS.model_copy(update={"fetch_max_redirects": 0})
    async with ImageFetcher(settings) as fetcher:
        assert await fetch_code(fetcher, f"{server.base}/hop/1") == "image_fetch_redirects"


async def test_redirect_to_another_scheme_is_refused(
    server: _Server, fetcher: ImageFetcher
) -> None:
    assert await fetch_code(fetcher, f"{server.base}/to-ftp") == "image_url_scheme"


@pytest.mark.parametrize("url", ["ftp://127.0.0.1/x.png", "file:///etc/passwd", "/relative.png"])
async def test_only_http_and_https(fetcher: ImageFetcher, url: str) -> None:
    assert await fetch_code(fetcher, url) == "image_url_scheme"


@pytest.mark.parametrize("url", ["http://", "http://[::1/x"])
async def test_unusable_url(fetcher: ImageFetcher, url: str) -> None:
    assert await fetch_code(fetcher, url) == "image_url_invalid"


async def test_declared_length_over_the_cap(server: _Server, fetcher: ImageFetcher) -> None:
    assert await fetch_code(fetcher, f"{server.base}/declared-huge") == "image_too_large"


async def test_streamed_body_stops_at_the_cap(server: _Server, fetcher: ImageFetcher) -> None:
    assert await fetch_code(fetcher, f"{server.base}/stream") == "image_too_large"
    assert server.stream_done.wait(timeout=5)
    # The server stopped because we hung up, long before sending everything.
    assert server.streamed < STREAM_TOTAL // 4


async def test_slow_server_times_out(server: _Server) -> None:
    async with ImageFetcher(FETCH_SETTINGS, retries=0) as fetcher:
        started = time.perf_counter()
        assert await fetch_code(fetcher, f"{server.base}/slow") == "image_fetch_timeout"
        assert time.perf_counter() - started < 1.2


async def test_dripping_server_hits_the_attempt_deadline(server: _Server) -> None:
    async with ImageFetcher(FETCH_SETTINGS, retries=0) as fetcher:
        started = time.perf_counter()
        assert await fetch_code(fetcher, f"{server.base}/drip") == "image_fetch_timeout"
        assert time.perf_counter() - started < 1.5


async def test_connection_refused(fetcher: ImageFetcher) -> None:
    assert (
        await fetch_code(fetcher, f"http://127.0.0.1:{free_port()}/x.png") == "image_fetch_failed"
    )


async def test_loopback_is_refused_unless_allowed(server: _Server) -> None:
    settings = FETCH_SETTINGS.model_copy(update={"fetch_allow_networks": []})
    async with ImageFetcher(settings, retries=0) as fetcher:
        assert await fetch_code(fetcher, f"{server.base}/image.png") == "image_url_blocked"
        assert await fetch_code(fetcher, f"http://localhost:{server.server_port}/image.png") == (
            "image_url_blocked"
        )
    assert server.hits["/image.png"] == 0


async def test_redirect_to_a_private_address_is_refused(server: _Server) -> None:
    async with ImageFetcher(FETCH_SETTINGS, retries=0) as fetcher:
        code = await fetch_code(fetcher, f"{server.base}/to-metadata")
    assert code == "image_url_blocked"


async def test_messages_do_not_leak_query_strings(server: _Server, fetcher: ImageFetcher) -> None:
    with pytest.raises(ImageRejected) as info:
        await fetcher.fetch(f"{server.base}/missing?X-Amz-Signature=secret")
    assert "secret" not in info.value.message


async def test_cookies_are_not_kept(server: _Server, fetcher: ImageFetcher) -> None:
    assert await fetcher.fetch(f"{server.base}/set-cookie") == b""
    assert await fetcher.fetch(f"{server.base}/echo-cookie") == b""
