"""The exception tree of modstream.

    ModstreamError                  root; ``retriable`` says whether trying again can help
    ├── ConfigError                 bad settings, policy file or model repository (fatal at startup)
    │   ├── PolicyError             a policy file that does not validate
    │   └── ModelMismatch           the served model is not the one the consumer expects
    ├── EventRejected               one event is bad; it is dead-lettered with ``code``
    │   ├── InvalidEvent            cannot be parsed or validated
    │   └── ImageRejected           cannot be fetched, decoded or is over a limit
    ├── InferenceError              a Triton call failed
    │   ├── InferenceUnavailable    transient: server down, overloaded, timed out (retriable)
    │   └── InferenceRejected       permanent for this input (the event is dead-lettered)
    ├── DeliveryError               producing to Kafka failed (retriable)
    ├── BrokerUnavailable           Kafka cannot be reached at startup
    └── LocalServiceError           the embedded broker or Triton could not be started

Dependency errors (aiokafka, grpc, Pillow, httpx) are translated into these at the module that
talks to the dependency, with ``raise ... from exc``.
"""

from __future__ import annotations

from consumer.contract.reasons import ReasonCode


class ModstreamError(Exception):
    """Root of every error modstream raises on purpose."""

    retriable: bool = False


class ConfigError(ModstreamError):
    """Settings, a policy file or the model repository are wrong; fix them and restart."""


class PolicyError(ConfigError):
    """A policy file does not validate."""


class ModelMismatch(ConfigError):
    """The model Triton serves does not have the inputs/outputs the consumer expects."""


class EventRejected(ModstreamError):
    """One event cannot be moderated; it goes to the dead-letter topic under ``code``."""

    def __init__(self, code: ReasonCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def __reduce__(self) -> tuple[type[EventRejected], tuple[ReasonCode, str]]:
        # Rebuilt from both fields when it crosses from a decode worker process.
        return (type(self), (self.code, self.message))


class InvalidEvent(EventRejected):
    """The record is not a valid ImageEvent."""


class ImageRejected(EventRejected):
    """The image cannot be fetched or decoded, or breaks a size limit."""


class InferenceError(ModstreamError):
    """A call to Triton failed; ``code`` is the gRPC status name, for metrics."""

    def __init__(self, message: str, code: str = "UNKNOWN") -> None:
        super().__init__(message)
        self.code = code

    def __reduce__(self) -> tuple[type[InferenceError], tuple[str, str]]:
        return (type(self), (str(self), self.code))


class InferenceUnavailable(InferenceError):
    """Triton is unreachable, overloaded or timed out; the call is retried."""

    retriable = True


class InferenceRejected(InferenceError):
    """Triton refused this input for good (e.g. a tensor of the wrong shape)."""


class DeliveryError(ModstreamError):
    """A record could not be produced to Kafka; the producer retries it."""

    retriable = True


class BrokerUnavailable(ModstreamError):
    """Kafka could not be reached at startup; check the bootstrap servers and credentials."""

    retriable = True


class LocalServiceError(ModstreamError):
    """The embedded Tansu broker or tritonserver did not start or stopped unexpectedly."""
