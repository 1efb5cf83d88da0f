"""Logging setup: one JSON object per line, with the structured fields passed in ``extra``.

Image URLs are often pre-signed: the object store's signature travels in the query string, and
a leaked line grants access to the image until it expires. modstream's own messages name URLs
without query or credentials; two guards keep everyone else's lines to the same rule:

- HTTP client libraries that log requests are held at WARNING (``REQUEST_LOGGERS``): httpx
  writes ``HTTP Request: GET <full URL>`` at INFO, httpcore every header at DEBUG.
- Every line that reaches the handler, from any logger and at any level, has the query
  string, fragment and credentials of each URL in its message and traceback replaced.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from datetime import UTC, datetime

from consumer.runtime.settings import LogSettings

# Fields the pipeline passes through ``extra=``; anything else in a record's __dict__ is
# logging's own bookkeeping.
STRUCTURED_FIELDS = (
    "topic",
    "partition",
    "offset",
    "tenant",
    "event_id",
    "action",
    "reason",
    "model",
    "model_version",
)

REQUEST_LOGGERS = ("httpx", "httpcore")
"""Loggers that write request URLs or header values below WARNING, whatever the level set."""

REDACTED = "<redacted>"

# scheme://[userinfo@]host[:port][/path][?query][#fragment], ended by whitespace or a quote
# or bracket, as URLs appear inside messages, reprs and tracebacks.
_URL = re.compile(
    r"(?P<scheme>\b[a-zA-Z][a-zA-Z0-9+.-]*://)"
    r"(?P<userinfo>[^\s/?#@'\"<>()\[\]]*@)?"
    r"(?P<rest>[^\s?#'\"<>()\[\]]*)"
    r"(?P<query>\?[^\s#'\"<>()\[\]]*)?"
    r"(?P<fragment>#[^\s'\"<>()\[\]]*)?"
)


def redact_urls(text: str) -> str:
    """``text`` with the credentials, query string and fragment of every URL replaced."""
    if "://" not in text:
        return text
    return _URL.sub(_redact_match, text)


def _redact_match(match: re.Match[str]) -> str:
    userinfo = f"{REDACTED}@" if match["userinfo"] else ""
    query = f"?{REDACTED}" if match["query"] else ""
    fragment = f"#{REDACTED}" if match["fragment"] else ""
    return f"{match['scheme']}{userinfo}{match['rest']}{query}{fragment}"


class RedactUrls(logging.Filter):
    """Rewrite each record's message and traceback with ``redact_urls`` before it is written."""

    _tracebacks = logging.Formatter()

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = redact_urls(message)
        if redacted != message:
            record.msg, record.args = redacted, None
        if record.exc_info and not record.exc_text:
            # Formatters reuse exc_text when it is set, so the traceback is written redacted.
            record.exc_text = self._tracebacks.formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact_urls(record.exc_text)
        if record.stack_info:
            record.stack_info = redact_urls(record.stack_info)
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for name in STRUCTURED_FIELDS:
            value = record.__dict__.get(name)
            if value is not None:
                entry[name] = value
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            entry["exc"] = record.exc_text
        return json.dumps(entry, default=str)


def configure_logging(settings: LogSettings) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if settings.json_format:
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(RedactUrls())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.level)
    # aiokafka logs every coordinator hiccup at INFO/WARNING; keep its noise out of event logs.
    logging.getLogger("aiokafka").setLevel(max(logging.WARNING, root.level))
    for name in REQUEST_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
