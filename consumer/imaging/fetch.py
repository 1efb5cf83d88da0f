"""Download image bytes over HTTP(S): timeouts, a byte cap, checked redirects, public hosts only.

Every refusal is an ``ImageRejected`` whose ``code`` is a ``ReasonCode``.
"""

from __future__ import annotations

import asyncio
import logging
from http.cookiejar import CookieJar, DefaultCookiePolicy
from types import TracebackType

import httpx

from consumer.contract.reasons import ReasonCode
from consumer.errors import ImageRejected
from consumer.imaging.egress import EgressPolicy, GuardedTransport, parse_networks
from consumer.runtime.settings import ImagingSettings

logger = logging.getLogger(__name__)

_FETCH_SCHEMES = frozenset({"http", "https"})
_TRANSIENT_FETCH_CODES = frozenset(
    {ReasonCode.IMAGE_FETCH_TIMEOUT, ReasonCode.IMAGE_FETCH_FAILED, ReasonCode.IMAGE_FETCH_HTTP_5XX}
)


def _redacted(url: httpx.URL) -> str:
    """The URL without credentials or query string, which often carries signatures."""
    return str(url.copy_with(userinfo=b"", query=None, fragment=None))


class ImageFetcher:
    """Download image bytes over HTTP(S) with timeouts, a byte cap and checked redirects.

    Timeouts, connection errors and 5xx answers are retried ``retries`` times with
    exponential backoff; when they persist the ``ImageRejected`` is raised like any other and
    the event is dead-lettered. The whole transfer of one attempt, redirects included, must
    finish within the connect plus read timeouts, so a server that drips bytes cannot hold a
    worker.
    """

    def __init__(
        self,
        settings: ImagingSettings,
        *,
        retries: int = 2,
        retry_backoff_s: float = 0.1,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._max_bytes = settings.max_image_bytes
        self._max_redirects = settings.fetch_max_redirects
        self._attempt_deadline_s = settings.fetch_connect_timeout_s + settings.fetch_read_timeout_s
        self._retries = retries
        self._retry_backoff_s = retry_backoff_s
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(
                connect=settings.fetch_connect_timeout_s,
                read=settings.fetch_read_timeout_s,
                write=settings.fetch_read_timeout_s,
                pool=settings.fetch_connect_timeout_s,
            ),
            follow_redirects=False,
            # Images are compressed already; asking for identity keeps the byte cap honest.
            headers={"Accept-Encoding": "identity", "User-Agent": "modstream"},
            # A shared jar would carry state between unrelated events and grow without bound.
            cookies=CookieJar(policy=DefaultCookiePolicy(allowed_domains=[])),
            transport=(
                transport
                if transport is not None
                else GuardedTransport(EgressPolicy(parse_networks(settings.fetch_allow_networks)))
            ),
        )

    async def close(self) -> None:
        await self._client.aclose()

    async def __aenter__(self) -> ImageFetcher:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def fetch(self, url: str) -> bytes:
        """Return the body at ``url``.

        Raises ImageRejected: ``image_url_invalid``, ``image_url_scheme``,
        ``image_fetch_redirects``, ``image_fetch_http_4xx``, ``image_fetch_http_5xx``,
        ``image_fetch_timeout``, ``image_fetch_failed``, ``image_too_large`` or
        ``image_url_blocked`` (a host that is not public, see ``consumer.imaging.egress``).
        """
        target = self._parse(url)
        attempt = 0
        while True:
            try:
                async with asyncio.timeout(self._attempt_deadline_s):
                    return await self._fetch_once(target)
            except TimeoutError as exc:
                rejection = ImageRejected(
                    ReasonCode.IMAGE_FETCH_TIMEOUT,
                    f"fetching {_redacted(target)} took longer than {self._attempt_deadline_s}s",
                )
                rejection.__cause__ = exc
            except ImageRejected as exc:
                rejection = exc
            if rejection.code not in _TRANSIENT_FETCH_CODES or attempt >= self._retries:
                raise rejection
            delay = self._retry_backoff_s * 2**attempt
            attempt += 1
            logger.info(
                "retrying image fetch from %s in %.2fs after %s (attempt %d of %d)",
                target.host,
                delay,
                rejection.code,
                attempt,
                self._retries,
            )
            await asyncio.sleep(delay)

    def _parse(self, url: str) -> httpx.URL:
        try:
            parsed = httpx.URL(url)
        except (httpx.InvalidURL, TypeError) as exc:
            raise ImageRejected(
                ReasonCode.IMAGE_URL_INVALID, f"image URL does not parse: {exc}"
            ) from exc
        self._check_scheme(parsed)
        return parsed

    @staticmethod
    def _check_scheme(url: httpx.URL) -> None:
        if url.scheme not in _FETCH_SCHEMES:
            scheme = f"{url.scheme}://" if url.scheme else "a URL without a scheme"
            raise ImageRejected(
                ReasonCode.IMAGE_URL_SCHEME,
                f"only http and https image URLs are fetched, not {scheme}",
            )
        if not url.host:
            raise ImageRejected(
                ReasonCode.IMAGE_URL_INVALID, f"image URL has no host: {_redacted(url)}"
            )

    async def _fetch_once(self, url: httpx.URL) -> bytes:
        request = self._client.build_request("GET", url)
        for _hop in range(self._max_redirects + 1):
            self._check_scheme(request.url)
            try:
                response = await self._client.send(request, stream=True)
            except httpx.TimeoutException as exc:
                raise ImageRejected(
                    ReasonCode.IMAGE_FETCH_TIMEOUT,
                    f"timed out fetching {_redacted(request.url)}: {exc!r}",
                ) from exc
            except httpx.HTTPError as exc:
                raise ImageRejected(
                    ReasonCode.IMAGE_FETCH_FAILED, f"cannot fetch {_redacted(request.url)}: {exc!r}"
                ) from exc
            try:
                if response.next_request is not None:
                    request = response.next_request
                    continue
                if response.status_code >= 400:
                    status_code = (
                        ReasonCode.IMAGE_FETCH_HTTP_4XX
                        if response.status_code < 500
                        else ReasonCode.IMAGE_FETCH_HTTP_5XX
                    )
                    raise ImageRejected(
                        status_code,
                        f"{_redacted(request.url)} answered HTTP {response.status_code}",
                    )
                return await self._read_capped(response)
            finally:
                await response.aclose()
        raise ImageRejected(
            ReasonCode.IMAGE_FETCH_REDIRECTS,
            f"{_redacted(url)} redirected more than {self._max_redirects} times",
        )

    async def _read_capped(self, response: httpx.Response) -> bytes:
        declared = response.headers.get("Content-Length", "")
        if declared.isdigit() and int(declared) > self._max_bytes:
            raise ImageRejected(
                ReasonCode.IMAGE_TOO_LARGE,
                f"{_redacted(response.url)} declares {declared} bytes, over the limit of "
                f"{self._max_bytes}",
            )
        body = bytearray()
        try:
            async for chunk in response.aiter_bytes():
                body.extend(chunk)
                if len(body) > self._max_bytes:
                    raise ImageRejected(
                        ReasonCode.IMAGE_TOO_LARGE,
                        f"{_redacted(response.url)} sent more than {self._max_bytes} bytes",
                    )
        except httpx.TimeoutException as exc:
            raise ImageRejected(
                ReasonCode.IMAGE_FETCH_TIMEOUT,
                f"timed out reading {_redacted(response.url)}: {exc!r}",
            ) from exc
        except httpx.HTTPError as exc:
            raise ImageRejected(
                ReasonCode.IMAGE_FETCH_FAILED, f"cannot read {_redacted(response.url)}: {exc!r}"
            ) from exc
        return bytes(body)
