"""A backbone derived by the training steps (here: fine-tuned, exported through the same path
as every step's output) is served by the real tritonserver and passes the consumer's model
check, with its own sha256 for heads and banks to compare against."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bench.local.triton import TritonServer
from consumer.inference.triton import TritonClassifier
from consumer.runtime.settings import TritonSettings
from tests.unit.training.test_finetune import _prototypes, tiny_model
from training.finetune.export import export_tuned, tuned_model
from training.finetune.split import split

pytestmark = pytest.mark.integration


async def test_a_derived_backbone_serves_and_passes_the_model_check(tmp_path: Path) -> None:
    model, names = tiny_model()
    repo = tmp_path / "repo"
    exported = export_tuned(tuned_model(split(model, names, 2), name="tiny"), repo, _prototypes())
    name = exported.folder.name
    with TritonServer(model_repository=repo, work_dir=tmp_path / "triton", models=[name]) as server:
        server.start(deadline_s=120)
        classifier = TritonClassifier(
            TritonSettings(url=server.grpc_url, model_name=name, ready_timeout_s=60)
        )
        try:
            spec = await classifier.connect(min_batch_size=4)
            result = await classifier.classify(np.zeros((2, 224, 224, 3), dtype=np.uint8))
        finally:
            await classifier.close()
    assert spec.backbone_sha256 == exported.sha256
    assert spec.input_size == 224
    assert result.probs.shape == (2, 5)
    assert np.allclose(result.probs.sum(axis=1), 1.0, atol=1e-4)
