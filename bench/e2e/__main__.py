"""``python -m bench.e2e``: ``modstream bench`` with every option of ``run_benchmark``."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from bench.clone import clone_root
from bench.e2e.modes import MODES, supported_modes
from bench.e2e.run import run_benchmark
from consumer.errors import ConfigError
from consumer.runtime.logs import configure_logging
from consumer.runtime.settings import LogSettings

logger = logging.getLogger(__name__)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.e2e", description=__doc__)
    parser.add_argument("--events", type=int, default=400)
    parser.add_argument("--megapixels", type=float, default=6.0)
    parser.add_argument("--out", type=Path, help="report folder (default: <clone>/bench/results)")
    parser.add_argument(
        "--quick", action="store_true", help="shorter raw Triton and latency phases (smoke test)"
    )
    parser.add_argument(
        "--modes",
        help=f"comma-separated consumer modes, from {', '.join(MODES)} (default: those this "
        f"consumer supports, here {', '.join(supported_modes())}, that Triton can serve)",
    )
    parser.add_argument(
        "--decode-workers", type=int, help="worker processes of the workers mode (default: cores)"
    )
    parser.add_argument("--batch-size", type=int, help="default: the consumer's setting")
    parser.add_argument("--inflight-batches", type=int, help="default: the consumer's setting")
    parser.add_argument("--partitions", type=int, default=4, help="of the input topic")
    parser.add_argument(
        "--raw",
        action="store_true",
        help="publish raw-image records (the JPEG as the value, the event fields as headers) "
        "instead of JSON events with the image inline as base64",
    )
    args = parser.parse_args(argv)
    configure_logging(LogSettings(json_format=False, level="WARNING"))
    modes = [m.strip() for m in args.modes.split(",") if m.strip()] if args.modes else None
    try:
        return run_benchmark(
            events=args.events,
            megapixels=args.megapixels,
            out_dir=args.out if args.out is not None else clone_root() / "bench" / "results",
            batch_size=args.batch_size,
            inflight_batches=args.inflight_batches,
            partitions=args.partitions,
            quick=args.quick,
            modes=modes,
            decode_workers=args.decode_workers,
            raw=args.raw,
        )
    except ConfigError as exc:
        logger.error("%s", exc)
        return 2


if __name__ == "__main__":
    sys.exit(main())
