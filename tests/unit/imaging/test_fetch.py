"""Fetching image URLs from a real local HTTP server: deadline, retries, caps, redirects."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator

import pytest

from bench.local.process import free_port
from consumer.contract.reasons import ReasonCode
from consumer.errors import ImageRejected
from consumer.imaging.decode import ImageLimits, decode_image
from consumer.imaging.fetch import ImageFetcher
from consumer.runtime.retry import RetryPolicy, is_retriable
from consumer.runtime.settings import ImagingSettings
from tests.support.image_server import (
    IMAGE,
    SIGNATURE,
    STREAM_TOTAL,
    ImageServer,
    image_server,
)

SIZE = 224
LIMITS = ImageLimits(max_bytes=32 * 1024 * 1024, max_pixels=64_000_000)
CAP = 256 * 1024

FETCH_SETTINGS = ImagingSettings(
    max_image_bytes=CAP,
    fetch_connect_timeout_s=0.5,
    fetch_read_timeout_s=0.3,
    fetch_max_redirects=2,
    fetch_deadline_s=5.0,
    fetch_attempts=3,
    fetch_allow_networks=["127.0.0.1/32"],
)
# The settings' attempts and deadline with short waits between attempts.
QUICK_RETRIES = RetryPolicy(initial_s=0.01, max_s=0.02, max_attempts=3, deadline_s=5.0)
ONE_ATTEMPT = RetryPolicy(initial_s=0.01, max_s=0.02, max_attempts=1, deadline_s=5.0)


@pytest.fixture
def server() -> Iterator[ImageServer]:
    with image_server() as running:
        yield running


@pytest.fixture
async def fetcher() -> AsyncIterator[ImageFetcher]:
    async with ImageFetcher(FETCH_SETTINGS, policy=QUICK_RETRIES) as client:
        yield client


async def fetch_code(fetcher: ImageFetcher, url: str) -> str:
    with pytest.raises(ImageRejected) as info:
        await fetcher.fetch(url)
    assert info.value.code in set(ReasonCode)
    return info.value.code


async def test_fetch_ok(server: ImageServer, fetcher: ImageFetcher) -> None:
    data = await fetcher.fetch(f"{server.base}/image.png")
    assert data == IMAGE
    assert decode_image(data, SIZE, LIMITS).pixels.shape == (SIZE, SIZE, 3)


async def test_fetch_404_is_not_retried(server: ImageServer, fetcher: ImageFetcher) -> None:
    assert await fetch_code(fetcher, f"{server.base}/missing") == "image_fetch_http_4xx"
    assert server.hits["/missing"] == 1


async def test_fetch_5xx_is_retried_then_rejected(
    server: ImageServer, fetcher: ImageFetcher
) -> None:
    assert await fetch_code(fetcher, f"{server.base}/unavailable") == "image_fetch_http_5xx"
    assert server.hits["/unavailable"] == 3


async def test_redirects_within_the_limit(server: ImageServer, fetcher: ImageFetcher) -> None:
    assert await fetcher.fetch(f"{server.base}/hop/2") == IMAGE


async def test_redirects_over_the_limit(server: ImageServer, fetcher: ImageFetcher) -> None:
    assert await fetch_code(fetcher, f"{server.base}/hop/3") == "image_fetch_redirects"
    assert server.hits["/image.png"] == 0


async def test_no_redirects_allowed(server: ImageServer) -> None:
    settings = FETCH_SETTINGS.model_copy(update={"fetch_max_redirects": 0})
    async with ImageFetcher(settings) as fetcher:
        assert await fetch_code(fetcher, f"{server.base}/hop/1") == "image_fetch_redirects"


async def test_redirect_to_another_scheme_is_refused(
    server: ImageServer, fetcher: ImageFetcher
) -> None:
    assert await fetch_code(fetcher, f"{server.base}/to-ftp") == "image_url_scheme"


@pytest.mark.parametrize("url", ["ftp://127.0.0.1/x.png", "file:///etc/passwd", "/relative.png"])
async def test_only_http_and_https(fetcher: ImageFetcher, url: str) -> None:
    assert await fetch_code(fetcher, url) == "image_url_scheme"


@pytest.mark.parametrize("url", ["http://", "http://[::1/x"])
async def test_unusable_url(fetcher: ImageFetcher, url: str) -> None:
    assert await fetch_code(fetcher, url) == "image_url_invalid"


async def test_declared_length_over_the_cap(server: ImageServer, fetcher: ImageFetcher) -> None:
    assert await fetch_code(fetcher, f"{server.base}/declared-huge") == "image_too_large"


async def test_streamed_body_stops_at_the_cap(server: ImageServer, fetcher: ImageFetcher) -> None:
    assert await fetch_code(fetcher, f"{server.base}/stream") == "image_too_large"
    assert server.stream_done.wait(timeout=5)
    # The server stopped because we hung up, long before sending everything.
    assert server.streamed < STREAM_TOTAL // 4


async def test_slow_server_times_out(server: ImageServer) -> None:
    async with ImageFetcher(FETCH_SETTINGS, policy=ONE_ATTEMPT) as fetcher:
        started = time.perf_counter()
        assert await fetch_code(fetcher, f"{server.base}/slow") == "image_fetch_timeout"
        assert time.perf_counter() - started < 1.2


async def test_connection_refused(fetcher: ImageFetcher) -> None:
    assert (
        await fetch_code(fetcher, f"http://127.0.0.1:{free_port()}/x.png") == "image_fetch_failed"
    )


async def test_loopback_is_refused_unless_allowed(server: ImageServer) -> None:
    settings = FETCH_SETTINGS.model_copy(update={"fetch_allow_networks": []})
    async with ImageFetcher(settings, policy=ONE_ATTEMPT) as fetcher:
        assert await fetch_code(fetcher, f"{server.base}/image.png") == "image_url_blocked"
        assert await fetch_code(fetcher, f"http://localhost:{server.server_port}/image.png") == (
            "image_url_blocked"
        )
    assert server.hits["/image.png"] == 0


async def test_redirect_to_a_private_address_is_refused(server: ImageServer) -> None:
    async with ImageFetcher(FETCH_SETTINGS, policy=ONE_ATTEMPT) as fetcher:
        code = await fetch_code(fetcher, f"{server.base}/to-metadata")
    assert code == "image_url_blocked"


async def test_messages_do_not_leak_query_strings(
    server: ImageServer, fetcher: ImageFetcher
) -> None:
    with pytest.raises(ImageRejected) as info:
        await fetcher.fetch(f"{server.base}/missing?X-Amz-Signature=secret")
    assert "secret" not in info.value.message


async def test_cookies_are_not_kept(server: ImageServer, fetcher: ImageFetcher) -> None:
    assert await fetcher.fetch(f"{server.base}/set-cookie") == b""
    assert await fetcher.fetch(f"{server.base}/echo-cookie") == b""


async def test_pre_signed_query_stays_out_of_rejections(server: ImageServer) -> None:
    async with ImageFetcher(FETCH_SETTINGS, policy=ONE_ATTEMPT) as fetcher:
        with pytest.raises(ImageRejected) as info:
            await fetcher.fetch(f"{server.base}/missing?{SIGNATURE}")
    assert SIGNATURE.split("=")[1] not in info.value.message


# --- one deadline per fetch -------------------------------------------------------------

# A server that answers at once and then sends a byte every 100 ms: no single read waits
# long enough for the read timeout.
DRIP = "/drip/100"
DEADLINE_S = 1.0
DRIP_SETTINGS = FETCH_SETTINGS.model_copy(
    update={
        "fetch_connect_timeout_s": 0.5,
        "fetch_read_timeout_s": 0.5,
        "fetch_deadline_s": DEADLINE_S,
        "fetch_attempts": 3,
    }
)


async def test_dripping_server_is_cut_off_at_the_fetch_deadline(server: ImageServer) -> None:
    # Before the deadline covered the whole fetch, each of the 3 attempts had its own
    # connect + read allowance: 3 x 1.0 s here, 36 s with the default settings.
    async with ImageFetcher(DRIP_SETTINGS) as fetcher:
        started = time.perf_counter()
        with pytest.raises(ImageRejected) as info:
            await fetcher.fetch(f"{server.base}{DRIP}")
        elapsed = time.perf_counter() - started
    assert info.value.code == "image_fetch_timeout"
    assert "deadline" in info.value.message
    assert DEADLINE_S * 0.9 <= elapsed < DEADLINE_S + 0.4


async def test_the_deadline_covers_redirects_and_retries(server: ImageServer) -> None:
    # /slow answers after 1.5 s: every attempt hits the 0.3 s read timeout and is retried
    # until the deadline leaves no room for another.
    settings = FETCH_SETTINGS.model_copy(update={"fetch_deadline_s": 0.8, "fetch_attempts": 10})
    async with ImageFetcher(settings) as fetcher:
        started = time.perf_counter()
        assert await fetch_code(fetcher, f"{server.base}/slow") == "image_fetch_timeout"
        elapsed = time.perf_counter() - started
    assert elapsed < 0.8 + 0.4
    assert server.hits["/slow"] >= 2


async def test_attempts_come_from_the_settings(server: ImageServer) -> None:
    settings = FETCH_SETTINGS.model_copy(update={"fetch_attempts": 4})
    async with ImageFetcher(settings) as fetcher:
        assert await fetch_code(fetcher, f"{server.base}/unavailable") == "image_fetch_http_5xx"
    assert server.hits["/unavailable"] == 4


async def test_one_attempt_means_no_retry(server: ImageServer) -> None:
    settings = FETCH_SETTINGS.model_copy(update={"fetch_attempts": 1})
    async with ImageFetcher(settings) as fetcher:
        assert await fetch_code(fetcher, f"{server.base}/unavailable") == "image_fetch_http_5xx"
    assert server.hits["/unavailable"] == 1


async def test_transient_rejections_say_they_are_retriable(server: ImageServer) -> None:
    async with ImageFetcher(FETCH_SETTINGS, policy=ONE_ATTEMPT) as fetcher:
        rejections = []
        for path in ("/unavailable", "/missing", "/slow"):
            with pytest.raises(ImageRejected) as info:
                await fetcher.fetch(f"{server.base}{path}")
            rejections.append(info.value)
    assert [(r.code, is_retriable(r)) for r in rejections] == [
        ("image_fetch_http_5xx", True),
        ("image_fetch_http_4xx", False),
        ("image_fetch_timeout", True),
    ]


async def test_a_burst_of_dripping_servers_does_not_hold_up_other_fetches(
    server: ImageServer,
) -> None:
    async with ImageFetcher(DRIP_SETTINGS) as fetcher:
        started = time.perf_counter()
        slow = [asyncio.create_task(fetcher.fetch(f"{server.base}{DRIP}")) for _ in range(40)]
        await asyncio.sleep(0.2)  # every slow fetch is connected and dripping
        images = await asyncio.gather(
            *(fetcher.fetch(f"{server.base}/image.png?n={n}") for n in range(10))
        )
        slow_still_running = sum(not task.done() for task in slow)
        outcomes = await asyncio.gather(*slow, return_exceptions=True)
        slow_s = time.perf_counter() - started
    assert images == [IMAGE] * 10
    # The healthy fetches finished while every dripping one was still being waited out.
    assert slow_still_running == len(slow)
    assert {getattr(o, "code", o) for o in outcomes} == {"image_fetch_timeout"}
    assert slow_s < DEADLINE_S + 0.5
