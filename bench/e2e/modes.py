"""The ways the consumer can be run end to end, and which of them this consumer supports.

- ``threads``: decode in the consumer's own thread pool (the default);
- ``workers``: decode in worker processes, one per usable core unless told otherwise;
- ``triton``: send the encoded bytes to Triton, whose bytes ensemble decodes them.

The consumer's settings decide which exist: a mode runs only when ``ImagingSettings`` has the
fields it needs, so the benchmark works before and after those settings land.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Final

from pydantic import ValidationError

from consumer.errors import ConfigError
from consumer.runtime.settings import ImagingSettings, Settings, TritonSettings

MODES: Final = ("threads", "workers", "triton")
# Modes in which the consumer decodes the images itself: the ones the decode targets apply to.
CONSUMER_DECODE_MODES: Final = frozenset({"threads", "workers"})
# The Python-backend model the bytes ensemble runs before the backbone.
PREPROCESS_MODEL: Final = "preprocess"


def usable_cores() -> int:
    """CPUs this process may run on (the affinity mask, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def _imaging_fields() -> Mapping[str, object]:
    return ImagingSettings.model_fields


def _accepts(**values: object) -> bool:
    """Whether ``ImagingSettings`` validates with ``values`` (a setting's range, not its name)."""
    try:
        ImagingSettings.model_validate(values)
    except ValidationError:
        return False
    return True


def _has_worker_processes() -> bool:
    # Either a pool kind beside the worker count, or a worker count where 0 means threads.
    return "decode_pool" in _imaging_fields() or _accepts(decode_workers=0)


def supported_modes() -> list[str]:
    """The modes whose settings this consumer has, in the order of ``MODES``."""
    supported = ["threads"]
    if _has_worker_processes():
        supported.append("workers")
    if "decode_in" in _imaging_fields():
        supported.append("triton")
    return supported


def bytes_model(triton: TritonSettings) -> str:
    """The ensemble that takes encoded bytes: the configured one, else ``<model>_bytes``."""
    configured = getattr(triton, "bytes_model_name", "")
    return str(configured) if configured else f"{triton.model_name}_bytes"


def triton_mode_models(triton: TritonSettings, repository: Path) -> list[str] | None:
    """What Triton must load for the ``triton`` mode, or None when the repository lacks it."""
    needed = [bytes_model(triton), PREPROCESS_MODEL]
    if all((repository / name / "config.pbtxt").is_file() for name in needed):
        return needed
    return None


def choose_modes(
    requested: Sequence[str] | None, triton: TritonSettings, repository: Path
) -> list[str]:
    """The modes to run: ``requested`` (checked), or every supported one that can run here.

    Raises ConfigError for an unknown mode, a mode this consumer has no settings for, or the
    ``triton`` mode without the bytes ensemble in the model repository.
    """
    supported = supported_modes()
    if requested is None:
        return [
            mode
            for mode in supported
            if mode != "triton" or triton_mode_models(triton, repository) is not None
        ]
    if not requested:
        raise ConfigError("give at least one consumer mode")
    for mode in requested:
        if mode not in MODES:
            raise ConfigError(f"unknown consumer mode {mode!r}; choose from {', '.join(MODES)}")
        if mode not in supported:
            raise ConfigError(
                f"this consumer has no settings for the {mode!r} mode (it supports "
                f"{', '.join(supported)})"
            )
        if mode == "triton" and triton_mode_models(triton, repository) is None:
            raise ConfigError(
                f"the triton mode needs {bytes_model(triton)!r} and {PREPROCESS_MODEL!r} in "
                f"{repository}"
            )
    return list(dict.fromkeys(requested))


def mode_settings(settings: Settings, mode: str, decode_workers: int | None = None) -> Settings:
    """``settings`` with the imaging settings that select ``mode``.

    ``decode_workers`` is the number of worker processes of the ``workers`` mode (default: one
    per usable core); the other modes keep the consumer's own decode settings.

    Raises ConfigError for a mode this consumer has no settings for.
    """
    if mode not in supported_modes():
        raise ConfigError(f"this consumer has no settings for the {mode!r} mode")
    fields = _imaging_fields()
    update: dict[str, object] = {}
    if mode == "workers":
        update["decode_workers"] = decode_workers or usable_cores()
        if "decode_pool" in fields:
            update["decode_pool"] = "processes"
    elif "decode_pool" in fields:
        update["decode_pool"] = "threads"
    elif _accepts(decode_workers=0):
        # Where the worker count alone selects processes, 0 means the thread pool.
        update["decode_workers"] = 0
    if "decode_in" in fields:
        update["decode_in"] = "triton" if mode == "triton" else "consumer"
    imaging = ImagingSettings.model_validate({**settings.imaging.model_dump(), **update})
    return settings.model_copy(update={"imaging": imaging})


def describe_mode(settings: Settings) -> dict[str, object]:
    """The decode settings a mode ran with, for the report."""
    imaging = settings.imaging.model_dump(mode="json")
    keys = ("decode_workers", "decode_pool", "decode_in")
    described: dict[str, object] = {key: imaging[key] for key in keys if key in imaging}
    if imaging.get("decode_in") == "triton":
        described["bytes_model"] = bytes_model(settings.triton)
    return described
