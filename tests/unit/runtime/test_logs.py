"""Logs never carry a pre-signed image URL's query, credentials or header values."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import pytest

from consumer.errors import ImageRejected
from consumer.imaging.fetch import ImageFetcher
from consumer.runtime.logs import REQUEST_LOGGERS, configure_logging, redact_urls
from consumer.runtime.retry import RetryPolicy
from consumer.runtime.settings import ImagingSettings, LogSettings
from tests.support.image_server import PRESIGNED_QUERY, SIGNATURE, image_server

SECRET = SIGNATURE.split("=", 1)[1]
FETCH = ImagingSettings(fetch_allow_networks=["127.0.0.1/32"], fetch_deadline_s=5.0)
QUICK = RetryPolicy(initial_s=0.01, max_s=0.02, max_attempts=2, deadline_s=5.0)


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    names = ("aiokafka", *REQUEST_LOGGERS)
    levels = {name: logging.getLogger(name).level for name in names}
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    for name, saved in levels.items():
        logging.getLogger(name).setLevel(saved)


async def _fetch_everything(log_level: str) -> list[str]:
    """Fetch pre-signed URLs (served, redirected, missing, failing) and return the log lines."""
    configure_logging(LogSettings(level=log_level))
    handler = logging.getLogger().handlers[0]
    assert isinstance(handler, logging.StreamHandler)
    lines: list[str] = []
    handler.setStream(_Lines(lines))
    with image_server() as server:
        async with ImageFetcher(FETCH, policy=QUICK) as fetcher:
            assert await fetcher.fetch(server.presigned())
            assert await fetcher.fetch(f"{server.base}/redirect-signed?{PRESIGNED_QUERY}")
            for path in ("/missing", "/unavailable"):
                with pytest.raises(ImageRejected):
                    await fetcher.fetch(f"{server.base}{path}?{PRESIGNED_QUERY}")
    return lines


class _Lines:
    """A text stream collecting what the handler writes."""

    def __init__(self, lines: list[str]) -> None:
        self._lines = lines

    def write(self, text: str) -> int:
        self._lines.extend(line for line in text.splitlines() if line)
        return len(text)

    def flush(self) -> None:
        pass


@pytest.mark.parametrize("level", ["INFO", "DEBUG"])
async def test_no_log_line_carries_a_pre_signed_url(level: str) -> None:
    lines = await _fetch_everything(level)

    # Not vacuous: the fetcher's own retry line was written, naming the host only.
    assert any("retrying image fetch from 127.0.0.1" in line for line in lines)
    leaks = [line for line in lines if SECRET in line or "X-Amz-" in line]
    assert leaks == []
    for line in lines:
        json.loads(line)


async def test_request_loggers_are_held_at_warning() -> None:
    await _fetch_everything("DEBUG")
    assert all(logging.getLogger(name).level == logging.WARNING for name in REQUEST_LOGGERS)


def test_any_logger_has_urls_redacted(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(LogSettings(level="INFO"))
    url = f"https://user:pw@bucket.s3.amazonaws.com/a/b.png?{PRESIGNED_QUERY}#frag"
    library = logging.getLogger("some.library")
    library.warning("GET %s failed", url)
    try:
        raise ValueError(f"could not open {url!r}")
    except ValueError:
        library.exception("download failed")

    written = capsys.readouterr().err.splitlines()
    entries = [json.loads(line) for line in written]
    assert entries[0]["msg"] == (
        "GET https://<redacted>@bucket.s3.amazonaws.com/a/b.png?<redacted>#<redacted> failed"
    )
    assert "bucket.s3.amazonaws.com/a/b.png?<redacted>" in entries[1]["exc"]
    assert not any(SECRET in line or "pw@" in line for line in written)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("no url here", "no url here"),
        ("http://h/p.png", "http://h/p.png"),
        (
            "see http://h:8080/p.png?sig=1 and https://x/y?z#f",
            "see http://h:8080/p.png?<redacted> and https://x/y?<redacted>#<redacted>",
        ),
        ("URL('https://h/p?token=abc')", "URL('https://h/p?<redacted>')"),
        ('"s3://bucket/key?versionId=7"', '"s3://bucket/key?<redacted>"'),
        ("ftp://me:secret@h/file", "ftp://<redacted>@h/file"),
    ],
)
def test_redact_urls(text: str, expected: str) -> None:
    assert redact_urls(text) == expected
