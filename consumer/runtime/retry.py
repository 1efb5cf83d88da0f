"""The one retry policy: which failures are tried again, how often, how long apart.

Every retry loop in modstream (producing outcomes, Triton calls, image fetches, the Kafka
fetch loop) draws its delays from a ``RetryPolicy``:

- **What is retried** is decided by the error, not the loop: a ``ModstreamError`` whose class
  (or instance) says ``retriable = True`` — ``InferenceUnavailable``, ``DeliveryError``, and
  ``ImageRejected`` for timeouts, unreachable hosts and 5xx answers — or, at the Kafka
  boundary, aiokafka's own ``KafkaError.retriable``. Everything else fails at once.
- **How long apart**: exponential backoff from ``initial_s``, doubling up to ``max_s``, with
  "equal jitter" — each delay is drawn uniformly from [d/2, d] so that replicas that failed
  together do not retry together, yet no delay collapses to zero.
- **For how long**: ``max_attempts`` and/or ``deadline_s`` (all attempts and waits together);
  neither set means until it works — used where giving up would lose an event (producing an
  outcome, inference), with a circuit breaker and backpressure in front instead.

The policies in use are defined at the end of this module; docs/delivery.md lists them.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass

from consumer.errors import ModstreamError
from consumer.runtime.settings import ImagingSettings, TritonSettings


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with equal jitter, bounded by attempts and/or an overall deadline."""

    initial_s: float
    max_s: float
    max_attempts: int | None = None
    """Attempts in all, the first included; None: no bound."""
    deadline_s: float | None = None
    """All attempts and waits together; None: no bound."""
    multiplier: float = 2.0

    def begin(self) -> Attempts:
        """Start counting one operation's attempts (its first attempt is under way)."""
        return Attempts(self, time.monotonic())


class Attempts:
    """One operation's progress through its ``RetryPolicy``."""

    def __init__(self, policy: RetryPolicy, started: float) -> None:
        self._policy = policy
        self._started = started
        self._backoff = policy.initial_s
        self.attempt = 1
        """The attempt under way, counted from 1."""

    def remaining_s(self) -> float | None:
        """Time left before the deadline (never below 0), or None without one."""
        if self._policy.deadline_s is None:
            return None
        return max(0.0, self._policy.deadline_s - (time.monotonic() - self._started))

    def next_delay(self) -> float | None:
        """How long to wait before the next attempt, or None when the policy says give up.

        Gives up when the attempts are used, or when waiting would reach the deadline.
        """
        policy = self._policy
        if policy.max_attempts is not None and self.attempt >= policy.max_attempts:
            return None
        delay = self._backoff * random.uniform(0.5, 1.0)
        remaining = self.remaining_s()
        if remaining is not None and delay >= remaining:
            return None
        self._backoff = min(self._backoff * policy.multiplier, policy.max_s)
        self.attempt += 1
        return delay


def is_retriable(exc: BaseException) -> bool:
    """Whether trying again can help: the error's own ``retriable`` flag, False if it has none."""
    return isinstance(exc, ModstreamError) and exc.retriable


# The retry policy of each loop that retries, in one place.

PRODUCE = RetryPolicy(initial_s=0.1, max_s=5.0)
"""Producing a decision or dead letter: until acknowledged (the event's offset waits)."""

KAFKA_FETCH = RetryPolicy(initial_s=0.1, max_s=5.0)
"""The consumer's fetch loop after a broker error: until the broker answers."""


def inference_policy(triton: TritonSettings) -> RetryPolicy:
    """A Triton request: until answered; the circuit breaker in front paces the attempts."""
    return RetryPolicy(initial_s=triton.retry_initial_backoff_s, max_s=triton.retry_max_backoff_s)


def image_fetch_policy(imaging: ImagingSettings) -> RetryPolicy:
    """Downloading an ``image_url``: a few attempts, all within the fetch deadline."""
    return RetryPolicy(
        initial_s=0.1,
        max_s=1.0,
        max_attempts=imaging.fetch_attempts,
        deadline_s=imaging.fetch_deadline_s,
    )
