"""The part of preparing an event that runs in the decode pool: parse, base64, decode.

Kept apart from the pipeline so that a decode worker process imports only this stack (no
Kafka, Triton or bank index). Everything here pickles: the job, the results, the refusals.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from consumer.contract.events import ImageEvent
from consumer.contract.headers import Headers
from consumer.contract.parse import parse_record
from consumer.errors import EventRejected
from consumer.imaging.decode import (
    DecodedImage,
    EncodedImage,
    ImageLimits,
    check_or_decode,
    decode_base64,
    decode_image,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DecodeJob:
    """What a decode needs besides the bytes; small, so it pickles cheaply to a worker."""

    input_size: int
    limits: ImageLimits
    with_pdq: bool
    in_triton: bool = False
    triton_formats: frozenset[str] = frozenset()
    """The formats Triton's decoder reads (the bytes model's ``modstream.encoded_formats``);
    empty: all. Others are decoded here."""


@dataclass(frozen=True)
class Unpacked:
    event: ImageEvent
    """Without its inline image once that is decoded: it need not travel back from a worker."""
    image: DecodedImage | EncodedImage | None
    """None when the image is behind a URL, still to be fetched, or was refused."""
    pdq: bytes | None = None
    rejection: EventRejected | None = None
    """Why the image was refused; the event parsed, so its dead letter names it."""


def unpack(value: bytes | None, headers: Headers | None, job: DecodeJob) -> Unpacked:
    """Parse a record and, when it carries its image (inline base64 or raw), decode it.

    Runs in the decode pool. Raises EventRejected when the record does not parse; a refused
    image comes back in ``rejection``, with the event it belongs to."""
    parsed = parse_record(value, headers)
    event = parsed.event
    if parsed.image is None and event.image_b64 is None:
        return Unpacked(event, None)
    inline = event.image_b64
    if inline is not None:
        event = event.model_copy(update={"image_b64": None})
    try:
        data = parsed.image if inline is None else decode_base64(inline, job.limits)
        image, pdq = decode_bytes(data or b"", job)
    except EventRejected as exc:
        return Unpacked(event, None, rejection=exc)
    return Unpacked(event, image, pdq)


def decode_bytes(data: bytes, job: DecodeJob) -> tuple[DecodedImage | EncodedImage, bytes | None]:
    """Decode image bytes (or check them, for Triton); add the PDQ hash of decoded pixels
    when asked. Runs in the decode pool. Raises ImageRejected."""
    if job.in_triton:
        image = check_or_decode(data, job.input_size, job.limits, job.triton_formats)
    else:
        image = decode_image(data, job.input_size, job.limits)
    if isinstance(image, EncodedImage) or not job.with_pdq:
        return image, None
    return image, _pdq_or_none(image)


def _pdq_or_none(image: DecodedImage) -> bytes | None:
    """An image that cannot be hashed is still decided by the other rules."""
    # Imported here: the bank index (faiss) stays out of workers that never hash.
    from consumer.banks.store import pdq_hash

    try:
        return pdq_hash(image.pixels)[0]
    except Exception:
        logger.warning(
            "could not compute the PDQ hash; bank matching by embedding only", exc_info=True
        )
        return None
