"""Prepare an event for the model: parse the record, fetch or unpack its image, decode it.

Parsing and decoding are CPU-bound and run in the decode pool (threads or worker processes,
``consumer.imaging.workers``): an inline or raw image in one hop, a URL's image in a second
after the async fetch. With ``decode_in=triton`` a still image is only checked here and sent
to Triton encoded. Whatever goes wrong becomes a ``Refused`` carrying the reason code, never an
exception out of ``prepare``: a bug in here dead-letters the event as ``internal_error``
instead of stalling its partition's commits.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from consumer.banks.store import pdq_hash
from consumer.contract.events import ImageEvent
from consumer.contract.headers import Headers
from consumer.contract.parse import parse_record
from consumer.contract.reasons import ReasonCode
from consumer.errors import EventRejected
from consumer.imaging.decode import (
    DecodedImage,
    EncodedImage,
    ImageLimits,
    check_or_decode,
    decode_base64,
    decode_image,
)
from consumer.imaging.fetch import ImageFetcher
from consumer.imaging.workers import DecodePool, DecodeWorkerLost
from consumer.pipeline.ports import Ready, Record, Refused
from consumer.pipeline.source import coordinates
from consumer.runtime.metrics import Metrics

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DecodeJob:
    """What a decode needs besides the bytes; small, so it pickles cheaply to a worker."""

    input_size: int
    limits: ImageLimits
    with_pdq: bool
    in_triton: bool = False


@dataclass(frozen=True)
class Unpacked:
    event: ImageEvent
    """Without its inline image once that is decoded: it need not travel back from a worker."""
    image: DecodedImage | EncodedImage | None
    """None when the image is behind a URL, still to be fetched, or was refused."""
    pdq: bytes | None = None
    rejection: EventRejected | None = None
    """Why the image was refused; the event parsed, so its dead letter names it."""


class Preparer:
    """Turns records into images the model takes: decoded to its input size, or checked and
    left encoded for Triton to decode."""

    def __init__(
        self, *, fetcher: ImageFetcher, pool: DecodePool, job: DecodeJob, metrics: Metrics
    ) -> None:
        self._fetcher = fetcher
        self._pool = pool
        self._job = job
        self._metrics = metrics

    async def prepare(self, record: Record) -> Ready | Refused:
        event: ImageEvent | None = None
        started = time.perf_counter()
        try:
            unpacked = await self._pool.run(unpack, record.value, record.headers, self._job)
            event = unpacked.event
            if unpacked.rejection is not None:
                return Refused(unpacked.rejection, event)
            if unpacked.image is not None:
                image, pdq = unpacked.image, unpacked.pdq
            else:
                fetched = await self._fetcher.fetch(str(event.image_url))
                image, pdq = await self._pool.run(decode_bytes, fetched, self._job)
        except EventRejected as exc:
            return Refused(exc, event)
        except Exception as exc:
            if not isinstance(exc, DecodeWorkerLost):
                logger.exception("unexpected error preparing the event", extra=coordinates(record))
            rejection = EventRejected(
                ReasonCode.INTERNAL_ERROR, f"unexpected {type(exc).__name__}: {exc}"
            )
            return Refused(rejection, event)
        self._metrics.decode_seconds.observe(time.perf_counter() - started)
        return Ready(event, image, pdq)


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
        image = check_or_decode(data, job.input_size, job.limits)
    else:
        image = decode_image(data, job.input_size, job.limits)
    if isinstance(image, EncodedImage) or not job.with_pdq:
        return image, None
    return image, _pdq_or_none(image)


def _pdq_or_none(image: DecodedImage) -> bytes | None:
    """An image that cannot be hashed is still decided by the other rules."""
    try:
        return pdq_hash(image.pixels)[0]
    except Exception:
        logger.warning(
            "could not compute the PDQ hash; bank matching by embedding only", exc_info=True
        )
        return None
