"""The decode pool: worker processes give the same results as threads, refusals cross the
process boundary with their reason code, and a worker that dies is replaced."""

from __future__ import annotations

import io
import os

import pytest
from PIL import Image

from consumer.contract.reasons import ReasonCode
from consumer.errors import EventRejected, ImageRejected, InferenceRejected
from consumer.imaging.decode import DecodedImage, EncodedImage, ImageLimits, check_or_decode
from consumer.imaging.unpack import DecodeJob, unpack
from consumer.imaging.workers import DecodePool, DecodeWorkerLost
from consumer.runtime.settings import LogSettings
from tests.integration.test_pipeline import image_event

LIMITS = ImageLimits(max_bytes=10_000_000, max_pixels=50_000_000)


def jpeg(size: tuple[int, int] = (320, 240), orientation: int | None = None) -> bytes:
    image = Image.new("RGB", size, (180, 90, 30))
    buffer = io.BytesIO()
    exif = Image.Exif()
    if orientation is not None:
        exif[0x0112] = orientation
    image.save(buffer, format="JPEG", exif=exif)
    return buffer.getvalue()


def gif() -> bytes:
    frames = [Image.new("RGB", (40, 30), c) for c in ((255, 0, 0), (0, 0, 255), (0, 255, 0))]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:])
    return buffer.getvalue()


def die() -> None:
    os._exit(3)


def test_rejections_pickle_with_their_code() -> None:
    import pickle

    rejected = pickle.loads(pickle.dumps(ImageRejected(ReasonCode.IMAGE_CORRUPT, "cut off")))
    assert isinstance(rejected, ImageRejected)
    assert rejected.code is ReasonCode.IMAGE_CORRUPT
    assert rejected.message == "cut off"
    inference = pickle.loads(pickle.dumps(InferenceRejected("bad tensor", "INVALID_ARG")))
    assert (str(inference), inference.code) == ("bad tensor", "INVALID_ARG")


def test_a_still_image_is_checked_and_left_encoded_an_animation_is_decoded() -> None:
    data = jpeg((320, 240), orientation=6)  # rotated: displayed 240 x 320
    checked = check_or_decode(data, 32, LIMITS)
    assert isinstance(checked, EncodedImage)
    assert (checked.source_width, checked.source_height) == (240, 320)
    assert checked.data == data
    animated = check_or_decode(gif(), 32, LIMITS)
    assert isinstance(animated, DecodedImage)
    assert animated.frames.shape == (3, 32, 32, 3)


@pytest.mark.parametrize(
    ("data", "limits", "code"),
    [
        (b"", LIMITS, ReasonCode.IMAGE_EMPTY),
        (b"not an image at all", LIMITS, ReasonCode.IMAGE_UNSUPPORTED_FORMAT),
        (jpeg(), ImageLimits(max_bytes=100, max_pixels=10**8), ReasonCode.IMAGE_TOO_LARGE),
        (
            jpeg((400, 300)),
            ImageLimits(max_bytes=10**7, max_pixels=1000),
            ReasonCode.IMAGE_TOO_MANY_PIXELS,
        ),
    ],
)
def test_the_check_refuses_what_decoding_would_refuse_with_the_same_code(
    data: bytes, limits: ImageLimits, code: ReasonCode
) -> None:
    with pytest.raises(ImageRejected) as raised:
        check_or_decode(data, 32, limits)
    assert raised.value.code is code


async def test_worker_processes_unpack_events_like_threads() -> None:
    job = DecodeJob(input_size=32, limits=LIMITS, with_pdq=True)
    value = image_event("e1", "acme", jpeg())
    threads = DecodePool(1, "threads", LogSettings())
    processes = DecodePool(2, "processes", LogSettings())
    try:
        await processes.warm_up()
        in_thread = await threads.run(unpack, value, None, job)
        in_process = await processes.run(unpack, value, None, job)
        bad = await processes.run(unpack, image_event("e2", "acme", b"GIF89a-cut"), None, job)
        with pytest.raises(EventRejected) as unparsable:
            await processes.run(unpack, b"{not json", None, job)
    finally:
        threads.close()
        processes.close()
    assert isinstance(in_thread.image, DecodedImage)
    assert isinstance(in_process.image, DecodedImage)
    assert (in_process.image.pixels == in_thread.image.pixels).all()
    assert in_process.pdq == in_thread.pdq is not None
    # The inline image is decoded; it does not travel back with the event.
    assert in_process.event.image_b64 is None
    assert in_process.event.event_id == "e1"
    # A refused image comes back with its event, so the dead letter names it.
    assert bad.rejection is not None
    assert bad.rejection.code is ReasonCode.IMAGE_CORRUPT
    assert bad.event.event_id == "e2"
    assert unparsable.value.code is ReasonCode.EVENT_NOT_JSON


async def test_a_dead_worker_is_replaced_and_a_call_that_kills_twice_is_refused() -> None:
    pool = DecodePool(1, "processes", LogSettings())
    job = DecodeJob(input_size=32, limits=LIMITS, with_pdq=False)
    try:
        with pytest.raises(DecodeWorkerLost):
            await pool.run(die)
        # The pool was rebuilt: the next event decodes.
        unpacked = await pool.run(unpack, image_event("e3", "acme", jpeg()), None, job)
    finally:
        pool.close()
    assert isinstance(unpacked.image, DecodedImage)
