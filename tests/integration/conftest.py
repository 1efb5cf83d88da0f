"""Session fixtures: the real Tansu broker and the real tritonserver, on free loopback ports."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from consumer.local.tansu import TansuBroker
from consumer.local.triton import TritonServer

REPO_ROOT = Path(__file__).resolve().parents[2]
TRITON_REPO = REPO_ROOT / "triton_repo"


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TansuBroker]:
    log = tmp_path_factory.mktemp("tansu") / "tansu.log"
    with TansuBroker(log_path=log, ready_timeout_s=30) as running:
        yield running


@pytest.fixture(scope="session")
def triton(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonServer]:
    server = TritonServer(model_repository=TRITON_REPO, work_dir=tmp_path_factory.mktemp("triton"))
    server.start(deadline_s=120)
    try:
        yield server
    finally:
        server.close()
