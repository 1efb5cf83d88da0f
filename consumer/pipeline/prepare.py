"""Prepare an event for the model: parse the record, fetch or unpack its image, decode it.

Parsing and decoding are CPU-bound and run in a thread pool, in one hop each; the URL fetch
is async. Whatever goes wrong becomes a ``Refused`` carrying the reason code, never an
exception out of ``prepare``: a bug in here dead-letters the event as ``internal_error``
instead of stalling its partition's commits.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import Executor

from consumer.banks.store import pdq_hash
from consumer.contract.events import ImageEvent
from consumer.contract.parse import parse_record
from consumer.contract.reasons import ReasonCode
from consumer.errors import EventRejected
from consumer.imaging.decode import DecodedImage, ImageLimits, decode_base64, decode_image
from consumer.imaging.fetch import ImageFetcher
from consumer.pipeline.ports import Ready, Record, Refused
from consumer.pipeline.source import coordinates
from consumer.runtime.metrics import Metrics

logger = logging.getLogger(__name__)


class Preparer:
    """Turns records into decoded images of the model's input size."""

    def __init__(
        self,
        *,
        fetcher: ImageFetcher,
        executor: Executor,
        limits: ImageLimits,
        input_size: int,
        with_pdq: bool,
        metrics: Metrics,
    ) -> None:
        self._fetcher = fetcher
        self._executor = executor
        self._limits = limits
        self._input_size = input_size
        self._with_pdq = with_pdq
        self._metrics = metrics

    async def prepare(self, record: Record) -> Ready | Refused:
        loop = asyncio.get_running_loop()
        event: ImageEvent | None = None
        started = time.perf_counter()
        try:
            parsed = await loop.run_in_executor(
                self._executor, parse_record, record.value, record.headers
            )
            event = parsed.event
            source: str | bytes
            if parsed.image is not None:
                source = parsed.image
            elif event.image_b64 is not None:
                source = event.image_b64
            else:
                source = await self._fetcher.fetch(str(event.image_url))
            image, pdq = await loop.run_in_executor(self._executor, self._decode, source)
        except EventRejected as exc:
            return Refused(exc, event)
        except Exception as exc:
            logger.exception("unexpected error preparing the event", extra=coordinates(record))
            rejection = EventRejected(
                ReasonCode.INTERNAL_ERROR, f"unexpected {type(exc).__name__}: {exc}"
            )
            return Refused(rejection, event)
        self._metrics.decode_seconds.observe(time.perf_counter() - started)
        return Ready(event, image, pdq)

    def _decode(self, source: str | bytes) -> tuple[DecodedImage, bytes | None]:
        """Decode inline base64 (``str``) or image bytes (fetched, or a raw-image record's
        value); add the PDQ hash when asked."""
        data = decode_base64(source, self._limits) if isinstance(source, str) else source
        image = decode_image(data, self._input_size, self._limits)
        return image, _pdq_or_none(image) if self._with_pdq else None


def _pdq_or_none(image: DecodedImage) -> bytes | None:
    """An image that cannot be hashed is still decided by the other rules."""
    try:
        return pdq_hash(image.pixels)[0]
    except Exception:
        logger.warning(
            "could not compute the PDQ hash; bank matching by embedding only", exc_info=True
        )
        return None
