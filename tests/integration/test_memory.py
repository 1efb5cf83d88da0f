"""The memory model holds: a consumer with default settings, fed events as large as the settings
let through and images that decode to the largest frames the decode limit admits, at full
speed, stays under the bound docs/memory.md derives from those settings (bench/memory.py).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from bench.local.tansu import TansuBroker
from bench.local.triton import TritonServer
from bench.memory import maximal_corpus, run_corpus
from bench.memory_model import memory_bound, memory_terms
from consumer.runtime.settings import MiB, Settings

pytestmark = pytest.mark.integration


async def _check(
    broker: TansuBroker, triton: TritonServer, work: Path, big: int, heavy: int
) -> None:
    defaults = Settings()
    corpus = maximal_corpus(defaults, big_events=big, decode_events=heavy)
    result = await run_corpus(broker.bootstrap_servers, triton.grpc_url, corpus, work)

    bound = memory_bound(defaults)
    terms = ", ".join(f"{name} {value / MiB:.0f}" for name, value in memory_terms(defaults).items())
    sys.stderr.write(
        f"\nmaximal corpus: {result.events} events, {result.record_bytes / MiB:.0f} MiB in "
        f"{result.seconds:.0f}s; peak RSS {result.peak_rss_bytes / MiB:.0f} MiB, bound "
        f"{bound / MiB:.0f} MiB ({terms})\n"
    )
    # Every event was decided: the largest images were decoded, not refused.
    assert (result.outcomes, result.dead_letters) == (len(corpus), 0)
    assert result.peak_rss_bytes <= bound


async def test_maximal_events_stay_under_the_memory_bound(
    broker: TansuBroker, triton: TritonServer, tmp_path: Path
) -> None:
    await _check(broker, triton, tmp_path, big=12, heavy=6)


@pytest.mark.slow
async def test_maximal_corpus_full(
    broker: TansuBroker, triton: TritonServer, tmp_path: Path
) -> None:
    await _check(broker, triton, tmp_path, big=60, heavy=24)
