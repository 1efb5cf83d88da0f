"""The consumer's memory model: resident memory bounded from four settings (docs/memory.md).

``python -m bench.memory`` measures the numbers it rests on; the deployment's memory request
and a unit test hold to it.
"""

from __future__ import annotations

from dataclasses import dataclass

from consumer.runtime.settings import MiB, Settings


@dataclass(frozen=True)
class MemoryModel:
    base_bytes: int
    """Resident memory of an idle ``modstream run`` once it serves (measured, rounded up)."""
    inflight_factor: float
    """Resident bytes per byte of records held (measured slope, rounded up): the record, the
    event parsed from it (an inline image is a str as long as its base64), the dead letter
    that carries it back."""


MODEL = MemoryModel(base_bytes=128 * MiB, inflight_factor=2.5)

ALLOCATOR_ENV = {"MALLOC_MMAP_THRESHOLD_": "131072"}
"""glibc's allocator settings the consumer runs with (deploy/base/consumer-deployment.yaml).
By default glibc raises its mmap threshold each time a large block is freed, up to 32 MiB, so
later frame buffers and records come from the heap, which keeps freed memory resident: a
hostile corpus peaked at 300-490 MB run to run that way, 170-182 MB with the threshold fixed
(setting it also turns the raising off)."""


def memory_terms(settings: Settings, model: MemoryModel = MODEL) -> dict[str, int]:
    """Each term of the bound, in bytes, for ``settings``."""
    held = settings.flow.max_inflight_bytes + 2 * settings.kafka.fetch_max_bytes
    return {
        "base": model.base_bytes,
        "in_flight": int(model.inflight_factor * held),
        "decode": settings.imaging.decode_workers * settings.imaging.max_decode_bytes,
    }


def memory_bound(settings: Settings, model: MemoryModel = MODEL) -> int:
    """The most resident memory a consumer with ``settings`` should reach, in bytes."""
    return sum(memory_terms(settings, model).values())
