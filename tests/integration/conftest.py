"""Session fixtures: the real Tansu broker and the real tritonserver, on free loopback ports."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from bench.local.tansu import TansuBroker
from bench.local.triton import TritonServer
from consumer.inference.ensemble import BYTES_SUFFIX, PREPROCESS_MODEL
from consumer.runtime.settings import TritonSettings
from tests.support.paths import TRITON_REPO

SERVED_MODEL = TritonSettings().model_name
BYTES_MODEL = f"{SERVED_MODEL}{BYTES_SUFFIX}"


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TansuBroker]:
    log = tmp_path_factory.mktemp("tansu") / "tansu.log"
    with TansuBroker(log_path=log, ready_timeout_s=30) as running:
        yield running


@pytest.fixture(scope="session")
def triton(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonServer]:
    if not (TRITON_REPO / SERVED_MODEL / "1" / "model.onnx").is_file():
        pytest.fail(
            f"{TRITON_REPO / SERVED_MODEL} is missing: run ./scripts/setup.sh (or "
            "`python -m training.nsfwjs.export --repo triton_repo`) to generate it"
        )
    if not (TRITON_REPO / BYTES_MODEL / "config.pbtxt").is_file():
        pytest.fail(
            f"{TRITON_REPO / BYTES_MODEL} is missing: run ./scripts/setup.sh (or "
            "`python -m training.bytes_models --repo triton_repo`) to generate it"
        )
    # Only the consumer's default model (and the steps that decode for it): the larger ones
    # would slow every session's start.
    server = TritonServer(
        model_repository=TRITON_REPO,
        work_dir=tmp_path_factory.mktemp("triton"),
        models=[SERVED_MODEL, PREPROCESS_MODEL, BYTES_MODEL],
    )
    server.start(deadline_s=120)
    try:
        yield server
    finally:
        server.close()
