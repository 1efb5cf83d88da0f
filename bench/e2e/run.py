"""``run_benchmark``: start the broker and Triton, run every phase, write the report; and make
Ctrl-C and SIGTERM stop the consumer and both servers before the command exits."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine, Sequence
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Final, TypeAlias

from bench.clone import clone_root
from bench.e2e.config import DEFAULT_MODEL, BenchConfig
from bench.e2e.cpu import memory_use
from bench.e2e.images import SAMPLE_PHOTOS, generate_images
from bench.e2e.modes import choose_modes, triton_mode_models
from bench.e2e.phases import measure
from bench.e2e.report import build_report, write_report
from bench.e2e.results import Measurements
from bench.e2e.table import format_table
from bench.local.tansu import TansuBroker
from bench.local.triton import TritonServer
from consumer.errors import ConfigError
from consumer.runtime.settings import Settings

logger = logging.getLogger(__name__)
# Every module of the benchmark logs under this one, so one level covers their progress lines.
_progress = logging.getLogger("bench.e2e")

EXIT_INTERRUPTED: Final = 130

SignalHandler: TypeAlias = Callable[[int, FrameType | None], object] | int | signal.Handlers | None


def run_benchmark(
    events: int,
    megapixels: float,
    out_dir: Path,
    *,
    batch_size: int | None = None,
    inflight_batches: int | None = None,
    partitions: int = 4,
    latency_seconds: float | None = None,
    quick: bool = False,
    model_repository: Path | None = None,
    model_name: str = DEFAULT_MODEL,
    policy_path: Path | None = None,
    modes: Sequence[str] | None = None,
    decode_workers: int | None = None,
    raw: bool = False,
) -> int:
    """Run every measurement, print a table and write the JSON report; return the exit code.

    ``batch_size`` and ``inflight_batches`` default to the consumer's settings (MODSTREAM_*
    environment included); ``quick`` shortens the latency phase and the raw Triton run, for
    tests. ``modes`` are the consumer modes run end to end (default: every one this consumer
    has settings for and the model repository can serve; see ``bench.e2e.modes``);
    ``decode_workers`` sizes the ``workers`` mode; ``raw`` publishes raw-image records (the
    JPEG as the value, the event fields as headers) instead of JSON events. Returns 0 whether
    or not the targets are met, 130 when interrupted (Ctrl-C or SIGTERM), after stopping the
    consumers, the broker and Triton.

    Raises ConfigError for impossible arguments or a missing model repository or policy, and
    LocalServiceError when the broker or Triton cannot start or the consumer stalls.
    """
    if events < 2:
        raise ConfigError("bench needs at least 2 events to measure a rate")
    if not 0.01 <= megapixels <= 60:
        raise ConfigError(f"megapixels must be between 0.01 and 60, not {megapixels}")
    if partitions < 1:
        raise ConfigError("the input topic needs at least one partition")
    if decode_workers is not None and decode_workers < 1:
        raise ConfigError("the workers mode needs at least one decode worker")
    if model_repository is None:
        model_repository = clone_root() / "triton_repo"
    if policy_path is None:
        policy_path = clone_root() / "policies" / "default.yaml"
    for path in (model_repository, policy_path):
        if not path.exists():
            raise ConfigError(f"{path} does not exist; run the benchmark from the repository")
    triton_settings = Settings().triton.model_copy(update={"model_name": model_name})
    chosen = choose_modes(modes, triton_settings, model_repository)
    served = [model_name]
    if "triton" in chosen:
        served += triton_mode_models(triton_settings, model_repository) or []
    config = BenchConfig(
        events=events,
        megapixels=megapixels,
        batch_size=batch_size,
        inflight_batches=inflight_batches,
        partitions=partitions,
        latency_seconds=latency_seconds if latency_seconds is not None else (2.0 if quick else 5.0),
        raw_min_seconds=0.5 if quick else 2.0,
        model_repository=model_repository,
        model_name=model_name,
        policy_path=policy_path,
        quick=quick,
        modes=tuple(chosen),
        decode_workers=decode_workers,
        raw=raw,
    )
    if _progress.level == logging.NOTSET:
        # Progress lines for a run that takes minutes, without the consumer's own INFO logs.
        _progress.setLevel(logging.INFO)

    started_at = datetime.now(UTC)
    began = time.monotonic()
    measurements = Measurements()
    restore_sigterm = _sigterm_as_interrupt()
    try:
        logger.info("consumer modes: %s", ", ".join(chosen))
        logger.info("generating %d photos of about %.1f MP", len(SAMPLE_PHOTOS), megapixels)
        images = generate_images(megapixels)
        with contextlib.ExitStack() as stack:
            work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="modstream-bench-")))
            broker = stack.enter_context(
                TansuBroker(log_path=work / "tansu.log", ready_timeout_s=30)
            )
            triton = stack.enter_context(
                TritonServer(model_repository=model_repository, models=served)
            )
            groups = {"broker": broker.pid, "triton": triton.pid}
            _run_interruptible(measure(config, images, broker, triton, measurements, groups, work))
            measurements.resources = memory_use(groups)
            logger.info("stopping the broker and Triton")
    except KeyboardInterrupt:
        logger.warning("benchmark interrupted; the consumer, the broker and Triton were stopped")
        return EXIT_INTERRUPTED
    finally:
        restore_sigterm()

    report = build_report(config, images, measurements, started_at, time.monotonic() - began)
    written = write_report(report, out_dir)
    sys.stdout.write(format_table(config, images, measurements, time.monotonic() - began))
    sys.stdout.write(f"wrote {written} and {out_dir / 'latest.json'}\n")
    return 0


def _sigterm_as_interrupt() -> Callable[[], None]:
    """Make SIGTERM unwind like Ctrl-C, so the child servers get stopped; returns the undo."""
    try:
        previous: SignalHandler = signal.signal(signal.SIGTERM, _interrupt)
    except ValueError:
        # Not the main thread: signals belong to whoever runs it.
        return lambda: None

    def restore() -> None:
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)

    return restore


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _run_interruptible(work: Coroutine[object, object, None]) -> None:
    """``asyncio.run(work)``; SIGTERM cancels it as Ctrl-C does, so its cleanup runs in order.

    Raises KeyboardInterrupt when interrupted by either signal.
    """
    handles_sigterm = signal.getsignal(signal.SIGTERM) is _interrupt

    async def cancellable() -> None:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        if handles_sigterm and task is not None:
            loop.add_signal_handler(signal.SIGTERM, task.cancel)
        try:
            await work
        finally:
            if handles_sigterm:
                loop.remove_signal_handler(signal.SIGTERM)
                # Removing the loop's handler resets SIGTERM to its default; keep unwinding.
                signal.signal(signal.SIGTERM, _interrupt)

    try:
        asyncio.run(cancellable())
    except asyncio.CancelledError:
        raise KeyboardInterrupt("SIGTERM") from None
