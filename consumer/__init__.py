"""modstream: streaming image moderation on Kafka and Triton."""

from __future__ import annotations

__version__ = "0.1.0"
