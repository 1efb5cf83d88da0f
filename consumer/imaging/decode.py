"""Decode and resize images into model input, treating every byte as hostile.

``decode_image`` and ``decode_base64`` are CPU-bound and run in the pipeline's thread pool.
Every refusal is an ``ImageRejected`` whose ``code`` is a ``ReasonCode``, so dead letters and
metrics can be grouped by a stable reason.

Pillow's global settings (``MAX_IMAGE_PIXELS``, ``LOAD_TRUNCATED_IMAGES``) are left alone:
limits come from ``ImageLimits`` and are checked on the header before pixels are decoded.

Memory: a decode holds the encoded bytes and one full-size frame in the decoder's buffer
(plus what some decoders keep besides, see ``decode_memory_bytes``); conversion and resizing
work tile by tile on top of it (``consumer.imaging.frames``). ``ImageLimits.max_decode_bytes``
caps that estimate per image, so the memory of the decode pool is bounded by settings
(docs/memory.md).
"""

from __future__ import annotations

import binascii
import io
import logging
import time
import warnings
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import pybase64
from PIL import Image, UnidentifiedImageError

from consumer.contract.reasons import ReasonCode
from consumer.errors import ImageRejected
from consumer.imaging.frames import SWAPS_AXES, TILE_OVERHEAD_BYTES, exif_orientation, frame_pixels
from consumer.imaging.headers import declared_size, without_unused_png_text
from consumer.runtime.settings import ImagingSettings, MiB

logger = logging.getLogger(__name__)

# Pillow warns (on stderr, outside the JSON logs) about images past its own pixel guard and
# then decodes them anyway. As an error it is caught below and dead-letters the image; set
# once at import because warning filters are process-wide and decoding runs in threads.
warnings.filterwarnings("error", category=Image.DecompressionBombWarning)

ALLOWED_FORMATS: tuple[str, ...] = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")

_DRAFT_FORMATS = frozenset({"JPEG", "MPO"})

# Bytes per pixel of Pillow's frame buffer by mode; every mode not listed takes 4.
_STORAGE_BYTES: dict[str, int] = {
    "1": 1,
    "L": 1,
    "P": 1,
    "I;16": 2,
    "I;16L": 2,
    "I;16B": 2,
    "I;16N": 2,
}
# Decoders that hold more than the frame buffer, in bytes per pixel on top of it: libwebp's
# animation decoder keeps two RGBA canvases and hands Pillow a copy of the frame as bytes.
_EXTRA_BYTES_PER_PIXEL: dict[str, int] = {"WEBP": 12}
# Reaching a later frame of an animation: Pillow converts GIF frames after the first to RGB(A)
# and keeps the previous frame to compose the next; APNG blends onto a copy of the previous.
_ANIMATED_BYTES_PER_PIXEL: dict[str, int] = {"GIF": 13, "PNG": 12}


@dataclass(frozen=True)
class DecodedImage:
    """An image ready for the model, with what was learnt about its source."""

    pixels: npt.NDArray[np.uint8]
    """uint8, shape (size, size, 3), RGB, C-contiguous: the first frame."""
    frames: npt.NDArray[np.uint8]
    """uint8, shape (k, size, size, 3): the sampled frames, ``frames[0]`` is ``pixels``; k is
    1 for still images."""
    source_frames: int
    """Frames (or pages) in the file."""
    source_width: int
    """Width as displayed, i.e. after EXIF orientation."""
    source_height: int
    source_format: str
    """Pillow's format name: "JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF" or "MPO"."""
    decode_seconds: float
    draft_scale: int
    """Factor (1, 2, 4 or 8) by which the JPEG decoder downscaled in the DCT domain."""


@dataclass(frozen=True)
class EncodedImage:
    """A still image checked against every limit but left encoded, for Triton to decode
    (``MODSTREAM_IMAGING__DECODE_IN=triton``)."""

    data: bytes
    source_width: int
    """Width as displayed, i.e. after EXIF orientation."""
    source_height: int
    source_format: str
    decode_seconds: float
    """Time spent checking the header."""
    source_frames: int = 1


@dataclass(frozen=True)
class ImageLimits:
    """Caps applied to every image before its pixels are decoded."""

    max_bytes: int
    max_pixels: int
    sample_frames: int = 4
    """Frames classified per animated image (or pages per multi-page file), evenly spaced."""
    max_frames: int = 1000
    """Animated images with more frames than this are refused."""
    max_decode_bytes: int = ImagingSettings.model_fields["max_decode_bytes"].default
    """Images whose decode would need more memory than this (``decode_memory_bytes``) are
    refused before their pixels are decoded."""

    @classmethod
    def from_settings(cls, settings: ImagingSettings) -> ImageLimits:
        return cls(
            max_bytes=settings.max_image_bytes,
            max_pixels=settings.max_pixels,
            sample_frames=settings.sample_frames,
            max_frames=settings.max_frames,
            max_decode_bytes=settings.max_decode_bytes,
        )


def decode_base64(text: str, limits: ImageLimits) -> bytes:
    """Decode strict standard base64 (no whitespace, correct padding) into image bytes.

    Raises ImageRejected: ``image_too_large`` (judged from the text length, before decoding)
    or ``invalid_base64``.
    """
    padding = 2 if text.endswith("==") else 1 if text.endswith("=") else 0
    decoded_size = len(text) * 3 // 4 - padding
    if decoded_size > limits.max_bytes:
        raise ImageRejected(
            ReasonCode.IMAGE_TOO_LARGE,
            f"base64 payload decodes to about {decoded_size} bytes, over the limit of "
            f"{limits.max_bytes}",
        )
    if len(text) % 4:
        # Python's decoder forgives some padding mistakes; the contract says RFC 4648.
        raise ImageRejected(
            ReasonCode.INVALID_BASE64,
            f"image payload is not valid base64: its length {len(text)} is not a multiple of 4",
        )
    try:
        # SIMD base64 (pybase64): about 9x faster than the stdlib on a 1 MB image, and as
        # strict (it also refuses padding beyond the last quantum, which RFC 4648 forbids).
        return pybase64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ImageRejected(
            ReasonCode.INVALID_BASE64, f"image payload is not valid base64: {exc}"
        ) from exc


def decode_image(data: bytes, size: int, limits: ImageLimits) -> DecodedImage:
    """Decode ``data`` and stretch the whole image to ``size`` x ``size`` RGB.

    The aspect ratio is not kept, matching the nsfwjs preprocessing the models were trained
    with. Transparent areas are composited over white. Animated images (GIF, WebP, APNG) and
    multi-page TIFFs contribute up to ``limits.sample_frames`` frames, evenly spaced from the
    first to the last, so a bad frame late in an animation is seen too (MPO: first picture).

    Raises ImageRejected with code ``image_empty``, ``image_too_large``,
    ``image_too_many_pixels``, ``image_too_many_frames``, ``image_unsupported_format`` or
    ``image_corrupt``; no other exception escapes for bad input.
    """
    if size < 1:
        raise ValueError(f"target size must be positive, not {size}")
    image = _opened(data, size, limits, time.perf_counter(), forward=False)
    if isinstance(image, EncodedImage):  # unreachable: nothing is forwarded when not asked
        raise TypeError("decode_image returned an encoded image")
    return image


def check_or_decode(
    data: bytes, size: int, limits: ImageLimits, formats: frozenset[str] = frozenset()
) -> EncodedImage | DecodedImage:
    """For decoding in Triton: check a still image against every limit ``decode_image``
    applies before pixels, and return it still encoded; decode animations and multi-page
    files here, because their sampled frames are several model inputs, and images in a format
    outside ``formats`` (when given: what Triton's decoder reads).

    Raises ImageRejected exactly as ``decode_image`` does for what the header shows; what
    only decoding finds (a truncated entropy stream) is reported by Triton's preprocess step.
    """
    if size < 1:
        raise ValueError(f"target size must be positive, not {size}")
    return _opened(data, size, limits, time.perf_counter(), forward=True, formats=formats)


def _opened(
    data: bytes,
    size: int,
    limits: ImageLimits,
    started: float,
    *,
    forward: bool,
    formats: frozenset[str] = frozenset(),
) -> EncodedImage | DecodedImage:
    if not data:
        raise ImageRejected(ReasonCode.IMAGE_EMPTY, "image payload is empty")
    if len(data) > limits.max_bytes:
        raise ImageRejected(
            ReasonCode.IMAGE_TOO_LARGE,
            f"image is {len(data)} bytes, over the limit of {limits.max_bytes}",
        )
    data = without_unused_png_text(data)
    try:
        with Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS) as image:
            forwardable = forward and (not formats or image.format in formats)
            return _decode_opened(
                image, size, limits, started, len(data), data if forwardable else None
            )
    except (ImageRejected, MemoryError):
        # Memory is capped before decoding, so running out of it says more about the host
        # than about this image: let it surface rather than dead-letter the event.
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        # Pillow's own guard fired before ours could (it runs inside Image.open, or while
        # seeking frames): restate it with the configured limit, not Pillow's.
        raise _pillow_pixel_refusal(data, limits, exc) from exc
    except UnidentifiedImageError as exc:
        if data.startswith(_SUPPORTED_SIGNATURES):
            # The signature of a format we read, but Pillow could not even parse the header.
            raise ImageRejected(
                ReasonCode.IMAGE_CORRUPT,
                "image header is corrupt: it starts like a supported format",
            ) from exc
        raise ImageRejected(
            ReasonCode.IMAGE_UNSUPPORTED_FORMAT,
            f"not an image in a supported format ({', '.join(ALLOWED_FORMATS)})",
        ) from exc
    except Exception as exc:
        # Pillow's decoders raise a zoo of types on malformed input (OSError, SyntaxError,
        # struct.error, IndexError, ...): all of them mean the bytes are bad.
        raise ImageRejected(
            ReasonCode.IMAGE_CORRUPT,
            f"image data is corrupt or truncated: {type(exc).__name__}: {exc}",
        ) from exc


def _too_many_pixels(width: int, height: int, limits: ImageLimits) -> ImageRejected:
    return ImageRejected(
        ReasonCode.IMAGE_TOO_MANY_PIXELS,
        f"image is {width}x{height} = {width * height} pixels, over the limit of "
        f"{limits.max_pixels}",
    )


def _pillow_pixel_refusal(data: bytes, limits: ImageLimits, exc: Exception) -> ImageRejected:
    size = declared_size(data, ALLOWED_FORMATS)
    if size is None:
        return ImageRejected(
            ReasonCode.IMAGE_TOO_MANY_PIXELS,
            f"image has too many pixels to decode (the limit is {limits.max_pixels}); the "
            f"decoder reported: {exc}",
        )
    width, height = size
    if width * height > limits.max_pixels:
        return _too_many_pixels(width, height, limits)
    # Declared within our limit, yet past Pillow's: frames that grow the canvas, oversized
    # TIFF tiles, or MAX_PIXELS configured above Pillow's own guard.
    return ImageRejected(
        ReasonCode.IMAGE_TOO_MANY_PIXELS,
        f"image declares {width}x{height} = {width * height} pixels, within the limit of "
        f"{limits.max_pixels}, but decoding it needs more pixels than the decoder allows: {exc}",
    )


def _decode_opened(
    image: Image.Image,
    size: int,
    limits: ImageLimits,
    started: float,
    data_bytes: int,
    forward: bytes | None,
) -> EncodedImage | DecodedImage:
    source_format = image.format or "unknown"
    width, height = image.size
    if width < 1 or height < 1:
        raise ImageRejected(
            ReasonCode.IMAGE_CORRUPT, f"image declares an empty size {width}x{height}"
        )
    if width * height > limits.max_pixels:
        raise _too_many_pixels(width, height, limits)

    source_frames = int(getattr(image, "n_frames", 1) or 1)
    if source_frames > limits.max_frames:
        raise ImageRejected(
            ReasonCode.IMAGE_TOO_MANY_FRAMES,
            f"image has {source_frames} frames, over the limit of {limits.max_frames}",
        )
    # An MPO's extra pictures are other views (stereo, depth) of the same scene: the first
    # is enough, and keeps the DCT-domain downscaling that makes phone photos cheap.
    wanted = 1 if source_format == "MPO" else limits.sample_frames
    indices = sample_indices(source_frames, wanted)
    # Frames of GIF/APNG/WebP are deltas: reaching frame k decodes the k before it.
    decoded_pixels = (indices[-1] + 1) * width * height
    if decoded_pixels > limits.max_pixels * limits.sample_frames:
        raise ImageRejected(
            ReasonCode.IMAGE_TOO_MANY_PIXELS,
            f"sampling {len(indices)} of {source_frames} frames of {width}x{height} means "
            f"decoding {decoded_pixels} pixels, over the limit of "
            f"{limits.max_pixels * limits.sample_frames} (max pixels x frames sampled)",
        )

    draft_scale = 1
    if source_format in _DRAFT_FORMATS and indices == [0]:
        drafted = image.draft("RGB", (size, size))
        if drafted is not None and drafted[1][2] > 0:
            draft_scale = max(1, round(width / drafted[1][2]))

    needed = decode_memory_bytes(image, source_format, animated=indices != [0], data=data_bytes)
    if needed > limits.max_decode_bytes:
        raise ImageRejected(
            ReasonCode.IMAGE_TOO_MANY_PIXELS,
            f"decoding this {width}x{height} {source_format} ({image.mode}) needs about "
            f"{needed // MiB} MiB, over the per-image decode memory limit of "
            f"{limits.max_decode_bytes // MiB} MiB (MODSTREAM_IMAGING__MAX_DECODE_BYTES)",
        )

    orientation = exif_orientation(image)
    if forward is not None and indices == [0]:
        swapped = orientation in SWAPS_AXES
        return EncodedImage(
            data=forward,
            source_width=height if swapped else width,
            source_height=width if swapped else height,
            source_format=source_format,
            decode_seconds=time.perf_counter() - started,
            source_frames=source_frames,
        )
    image.load()
    frames = []
    for index in indices:
        if index:
            image.seek(index)
            image.load()
        frames.append(frame_pixels(image, size, orientation))
    if orientation in SWAPS_AXES:
        width, height = height, width
    stacked = np.ascontiguousarray(np.stack(frames))
    return DecodedImage(
        pixels=stacked[0],
        frames=stacked,
        source_frames=source_frames,
        source_width=width,
        source_height=height,
        source_format=source_format,
        decode_seconds=time.perf_counter() - started,
        draft_scale=draft_scale,
    )


def decode_memory_bytes(
    image: Image.Image, source_format: str, *, animated: bool, data: int
) -> int:
    """An upper estimate of the memory ``decode_image`` needs for an opened image.

    The decoder holds the whole frame in Pillow's buffer (1, 2 or 4 bytes a pixel by mode,
    after JPEG draft scaling); some decoders hold more copies (``_EXTRA_BYTES_PER_PIXEL``,
    measured by tests/unit/imaging/test_decode_memory.py). Everything after the frame
    buffer works on tiles, a bounded amount. ``data`` is the size of the encoded bytes.
    """
    width, height = image.size
    per_pixel = _STORAGE_BYTES.get(image.mode, 4)
    if animated:
        per_pixel = max(per_pixel, _ANIMATED_BYTES_PER_PIXEL.get(source_format, per_pixel))
    per_pixel += _EXTRA_BYTES_PER_PIXEL.get(source_format, 0)
    return width * height * per_pixel + TILE_OVERHEAD_BYTES + data


def sample_indices(frames: int, wanted: int) -> list[int]:
    """Up to ``wanted`` distinct frame indices, evenly spaced, always the first and last."""
    if frames <= 1 or wanted <= 1:
        return [0]
    count = min(frames, wanted)
    return sorted({round(i * (frames - 1) / (count - 1)) for i in range(count)})


_SUPPORTED_SIGNATURES = (
    b"\x89PNG\r\n\x1a\n",
    b"\xff\xd8\xff",  # JPEG
    b"GIF87a",
    b"GIF89a",
    b"BM",
    b"II*\x00",  # TIFF, little-endian
    b"MM\x00*",  # TIFF, big-endian
)
