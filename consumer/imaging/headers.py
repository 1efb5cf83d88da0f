"""What is read from an image's bytes before it is decoded.

- ``declared_size``: the width and height a header declares, also when they are past
  Pillow's own pixel guard (which refuses before the size can be seen).
- ``without_unused_png_text``: a PNG without the text chunks decoding does not use.
"""

from __future__ import annotations

import io
import logging
import zlib
from collections.abc import Sequence

from PIL import Image

from consumer.runtime.settings import MiB

logger = logging.getLogger(__name__)

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_TEXT = frozenset({b"tEXt", b"zTXt", b"iTXt"})
# Text keywords Pillow reads the orientation from (XMP packet, ImageMagick's EXIF profile).
_ORIENTATION_KEYWORDS = frozenset({b"XML:com.adobe.xmp", b"Raw profile type exif"})
MAX_PNG_TEXT_BYTES = 1 * MiB
"""A kept PNG text chunk must inflate within this (Pillow's own limit per chunk)."""


def declared_size(data: bytes, formats: Sequence[str]) -> tuple[int, int] | None:
    """Width and height as the header declares them, read without any pixel-count guard.

    ``Image.open`` refuses very large declarations before the size can be seen; this opens
    the header with the format's own parser, as ``Image.open`` does, minus that check.
    None when none of ``formats`` parses the header.
    """
    Image.init()
    prefix = data[:16]
    for name in formats:
        entry = Image.OPEN.get(name)
        if entry is None:
            continue
        factory, accept = entry
        if accept is not None and accept(prefix) is not True:
            continue
        try:
            with factory(io.BytesIO(data), "") as image:
                width, height = image.size
        except Exception:
            # Parsed badly as this format: try the next, as Image.open does.
            logger.debug("header does not parse as %s", name, exc_info=True)
            continue
        return width, height
    return None


def without_unused_png_text(data: bytes) -> bytes:
    """``data`` without the PNG text chunks that decoding does not use.

    Text chunks (tEXt, zTXt, iTXt) are metadata: Pillow decompresses them while it reads the
    header and refuses an image whose compressed text would inflate past 1 MiB, so a valid
    PNG with a large caption would be dead-lettered as corrupt. Only two keywords matter
    here, the XMP packet and ImageMagick's raw EXIF profile, which may carry the orientation;
    they are kept when they inflate within ``MAX_PNG_TEXT_BYTES`` (checked with a bounded
    inflate, so a zip bomb in a text chunk costs at most that much). Every other text chunk
    is dropped unread. Chunk CRCs are per chunk, so the rest of the file is unchanged.
    Non-PNG data, and PNGs without text, are returned as they are.
    """
    if not data.startswith(_PNG_SIGNATURE) or not any(kind in data for kind in _PNG_TEXT):
        return data
    view = memoryview(data)
    kept: list[memoryview] = []
    run_start, position = 0, len(_PNG_SIGNATURE)
    dropped = False
    while position + 12 <= len(data):
        length = int.from_bytes(view[position : position + 4], "big")
        kind = bytes(view[position + 4 : position + 8])
        end = position + 12 + length
        if end > len(data):
            break  # truncated: what remains is Pillow's to judge
        if kind in _PNG_TEXT and not _png_text_is_used(kind, view[position + 8 : end - 4]):
            kept.append(view[run_start:position])
            run_start = end
            dropped = True
        if kind == b"IEND":
            break
        position = end
    if not dropped:
        return data
    kept.append(view[run_start:])
    return b"".join(kept)


def _png_text_is_used(kind: bytes, body: memoryview) -> bool:
    """Whether a text chunk may carry the orientation and inflates within the bound."""
    raw = bytes(body[:80])  # keywords are at most 79 bytes, then a NUL
    keyword_end = raw.find(b"\0")
    if keyword_end < 1 or raw[:keyword_end] not in _ORIENTATION_KEYWORDS:
        return False
    if len(body) > MAX_PNG_TEXT_BYTES:
        return False
    text = body[keyword_end + 1 :]
    if kind == b"tEXt":
        return True
    if kind == b"zTXt":
        return _inflates_within(text[1:], MAX_PNG_TEXT_BYTES)
    # iTXt: compression flag, method, language NUL, translated keyword NUL, text.
    if len(text) < 2:
        return False
    compressed = text[0] == 1
    rest = bytes(text[2:])
    language_end = rest.find(b"\0")
    translated_end = rest.find(b"\0", language_end + 1) if language_end >= 0 else -1
    if translated_end < 0:
        return False
    return not compressed or _inflates_within(rest[translated_end + 1 :], MAX_PNG_TEXT_BYTES)


def _inflates_within(compressed: bytes | memoryview, limit: int) -> bool:
    inflater = zlib.decompressobj()
    try:
        inflater.decompress(compressed, limit)
    except zlib.error:
        return False
    return not inflater.unconsumed_tail
