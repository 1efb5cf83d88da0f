"""``python -m bench.e2e.baselines KIND``: one of the benchmark's other consumers, in a process
of its own, configured like modstream by ``MODSTREAM_*`` variables.

- ``naive``: one event at a time, read to commit (:mod:`bench.e2e.naive`);
- ``peer``: one Triton request per image, many at once (:mod:`bench.e2e.peer`);
- ``passthrough``: fetch, produce and commit only, for the broker's cost
  (:mod:`bench.e2e.passthrough`).

Each reads the backlog of ``MODSTREAM_KAFKA__INPUT_TOPIC`` up to ``--ends`` in the group
``MODSTREAM_KAFKA__GROUP_ID``, writes to ``--topic`` and exits 0 once every offset is
committed (1 on any failure, with the error in its log).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Final

from bench.e2e.naive import run_naive_consumer
from bench.e2e.passthrough import run_passthrough
from bench.e2e.peer import run_peer_consumer
from consumer.imaging.decode import ImageLimits
from consumer.moderation.policy import load_policy
from consumer.runtime.settings import Settings
from consumer.service import topic_routes

logger = logging.getLogger(__name__)

KINDS: Final = ("naive", "peer", "passthrough")


def arguments(
    kind: str,
    topic: str,
    ends: dict[int, int],
    timeout_s: float,
    *,
    max_inflight: int | None = None,
    payload: Path | None = None,
) -> list[str]:
    """The command line of one baseline (what :func:`main` parses)."""
    argv = [kind, "--topic", topic, "--ends", json.dumps(ends), "--timeout", str(timeout_s)]
    if max_inflight is not None:
        argv += ["--max-inflight", str(max_inflight)]
    if payload is not None:
        argv += ["--payload", str(payload)]
    return argv


async def _run(args: argparse.Namespace, settings: Settings, payload: bytes) -> None:
    ends = {int(p): int(end) for p, end in json.loads(args.ends).items()}
    limits = ImageLimits.from_settings(settings.imaging)
    if args.kind == "passthrough":
        await run_passthrough(settings, ends, args.topic, payload, args.timeout)
        return
    policies = load_policy(settings.policy.path, topic_routes(settings.topics))
    if args.kind == "naive":
        await run_naive_consumer(settings, policies, ends, args.topic, limits, args.timeout)
    else:
        await run_peer_consumer(
            settings, policies, ends, args.topic, limits, args.timeout, args.max_inflight
        )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.e2e.baselines")
    parser.add_argument("kind", choices=KINDS)
    parser.add_argument("--topic", required=True, help="where the outcomes go")
    parser.add_argument("--ends", required=True, help='JSON {"partition": end offset}')
    parser.add_argument("--timeout", type=float, required=True, help="seconds for the backlog")
    parser.add_argument("--max-inflight", type=int, default=128, help="peer: events in flight")
    parser.add_argument("--payload", help="passthrough: file holding the record to produce")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s")
    try:
        payload = Path(args.payload).read_bytes() if args.payload else b""
        asyncio.run(_run(args, Settings(), payload))
    except Exception:
        # The harness reads this log when the exit status is not 0.
        logger.exception("%s consumer failed", args.kind)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
