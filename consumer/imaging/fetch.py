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
from consumer.runtime.retry import RetryPolicy, image_fetch_policy, is_retriable
from consumer.runtime.settings import ImagingSettings

logger = logging.getLogger(__name__)

_FETCH_SCHEMES = frozenset({"http", "https"})


def _transient(code: ReasonCode, message: str) -> ImageRejected:
    """A rejection that trying again may cure: a timeout, an unreachable host, a 5xx."""
    rejection = ImageRejected(code, message)
    rejection.retriable = True
    return rejection


def _translated(exc: httpx.HTTPError, verb: str, url: httpx.URL) -> ImageRejected:
    """httpx's error while trying to ``verb`` (fetch, read) ``url``, as a retriable rejection."""
    if isinstance(exc, httpx.TimeoutException):
        return _transient(
            ReasonCode.IMAGE_FETCH_TIMEOUT, f"timed out {verb}ing {_redacted(url)}: {exc!r}"
        )
    return _transient(ReasonCode.IMAGE_FETCH_FAILED, f"cannot {verb} {_redacted(url)}: {exc!r}")


def _redacted(url: httpx.URL) -> str:
    """The URL without credentials or query string, which often carries signatures."""
    return str(url.copy_with(userinfo=b"", query=None, fragment=None))


class ImageFetcher:
    """Download image bytes over HTTP(S) with a deadline, a byte cap and checked redirects.

    Each ``fetch`` has one overall deadline (``fetch_deadline_s``): every attempt, redirect,
    wait for a connection and backoff together, so a server that drips bytes holds the
    event for that long at most. Within it, timeouts, connection errors and 5xx answers are
    tried again (``fetch_attempts`` in all) as ``consumer.runtime.retry.image_fetch_policy``
    says; when they persist the ``ImageRejected`` is raised like any other and the event is
    dead-lettered.
    """

    def __init__(
        self,
        settings: ImagingSettings,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        policy: RetryPolicy | None = None,
    ) -> None:
        self._max_bytes = settings.max_image_bytes
        self._max_redirects = settings.fetch_max_redirects
        self._policy = policy if policy is not None else image_fetch_policy(settings)
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(
                connect=settings.fetch_connect_timeout_s,
                read=settings.fetch_read_timeout_s,
                write=settings.fetch_read_timeout_s,
                # Waiting for a free connection is bounded by the fetch deadline instead: a
                # pool timeout would spend an attempt without reaching the server.
                pool=None,
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
        ``image_fetch_timeout`` (including the overall deadline), ``image_fetch_failed``,
        ``image_too_large`` or ``image_url_blocked`` (a host that is not public, see
        ``consumer.imaging.egress``).
        """
        target = self._parse(url)
        attempts = self._policy.begin()
        while True:
            try:
                async with asyncio.timeout(attempts.remaining_s()):
                    return await self._fetch_once(target)
            except TimeoutError as exc:
                deadline = self._policy.deadline_s
                raise ImageRejected(
                    ReasonCode.IMAGE_FETCH_TIMEOUT,
                    f"fetching {_redacted(target)} did not finish within the fetch deadline "
                    f"of {deadline}s ({attempts.attempt} attempt(s))",
                ) from exc
            except ImageRejected as exc:
                if not is_retriable(exc):
                    raise
                delay = attempts.next_delay()
                if delay is None:
                    raise
                logger.info(
                    "retrying image fetch from %s in %.2fs after %s (attempt %d of %s)",
                    target.host,
                    delay,
                    exc.code,
                    attempts.attempt,
                    self._policy.max_attempts or "unbounded",
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
            except httpx.HTTPError as exc:
                raise _translated(exc, "fetch", request.url) from exc
            try:
                if response.next_request is not None:
                    request = response.next_request
                    continue
                answer = f"{_redacted(request.url)} answered HTTP {response.status_code}"
                if response.status_code >= 500:
                    raise _transient(ReasonCode.IMAGE_FETCH_HTTP_5XX, answer)
                if response.status_code >= 400:
                    raise ImageRejected(ReasonCode.IMAGE_FETCH_HTTP_4XX, answer)
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
        except httpx.HTTPError as exc:
            raise _translated(exc, "read", response.url) from exc
        return bytes(body)
