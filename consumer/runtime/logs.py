"""Logging setup: one JSON object per line, with the structured fields passed in ``extra``."""

from __future__ import annotations

import json
import logging
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
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure_logging(settings: LogSettings) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if settings.json_format:
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.level)
    # aiokafka logs every coordinator hiccup at INFO/WARNING; keep its noise out of event logs.
    logging.getLogger("aiokafka").setLevel(max(logging.WARNING, root.level))
