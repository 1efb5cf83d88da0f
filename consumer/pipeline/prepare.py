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

from consumer.contract.events import ImageEvent
from consumer.contract.reasons import ReasonCode
from consumer.errors import EventRejected
from consumer.imaging.fetch import ImageFetcher
from consumer.imaging.unpack import DecodeJob, decode_bytes, unpack
from consumer.imaging.workers import DecodePool, DecodeWorkerLost
from consumer.pipeline.ports import Ready, Record, Refused
from consumer.pipeline.source import coordinates
from consumer.runtime.metrics import Metrics

logger = logging.getLogger(__name__)


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
