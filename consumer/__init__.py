"""modstream: streaming image moderation on Kafka and Triton.

The names below are the public surface for embedding the consumer in another program::

    import asyncio
    from consumer import Settings, serve

    asyncio.run(serve(Settings(), stop=asyncio.Event()))

Everything else is internal and may change between versions.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from consumer.contract.events import Action, DeadLetter, Decision, ImageEvent, Reason
from consumer.contract.parse import parse_event
from consumer.contract.reasons import ReasonCode
from consumer.errors import (
    ConfigError,
    EventRejected,
    InferenceUnavailable,
    ModelMismatch,
    ModstreamError,
    PolicyError,
)
from consumer.runtime.settings import Settings

if TYPE_CHECKING:
    from consumer.service import serve

__version__ = "0.1.0"

__all__ = [
    "Action",
    "ConfigError",
    "DeadLetter",
    "Decision",
    "EventRejected",
    "ImageEvent",
    "InferenceUnavailable",
    "ModelMismatch",
    "ModstreamError",
    "PolicyError",
    "Reason",
    "ReasonCode",
    "Settings",
    "__version__",
    "parse_event",
    "serve",
]


def __getattr__(name: str) -> object:
    # ``serve`` pulls in the whole service (Kafka, Triton, banks, metrics): decode worker
    # processes and Triton's preprocess step import only the decode stack they run.
    if name == "serve":
        from consumer.service import serve

        return serve
    raise AttributeError(f"module 'consumer' has no attribute {name!r}")
