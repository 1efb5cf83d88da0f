"""Prune at 20% with a few distillation steps: the export is a servable, parity-checked model
version beside the unpruned one, and heads trained on the unpruned backbone are stale for it."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest

from bench.samples import photo_image
from consumer.errors import ModelMismatch
from consumer.inference.ensemble import read_config
from consumer.moderation.heads import BACKBONE_SHA_PARAMETER, HeadsDescriptor
from training.nsfwjs.models import CATEGORIES
from training.prototypes import clipart
from training.prune.cli import main

EMBEDDING_DIM = 1280
MODEL = "nsfw_mobilenet_v2_pruned20"

pytestmark = pytest.mark.integration


def _images(folder: Path, count: int, seed: int) -> None:
    folder.mkdir(parents=True)
    photos = ("astronaut", "camera", "rocket", "horse")
    for index in range(count):
        image = photo_image(photos[index % len(photos)]) if index % 2 else clipart(seed + index)
        image.convert("RGB").save(folder / f"{index}.jpg", quality=85)


@pytest.fixture(scope="module")
def pruned(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    root = tmp_path_factory.mktemp("prune")
    _images(root / "demo" / "images" / "train" / "none", 4, seed=0)
    _images(root / "demo" / "images" / "test" / "none", 4, seed=100)
    _images(root / "labelled" / "safe", 2, seed=200)
    _images(root / "labelled" / "safe_drawing", 2, seed=300)
    repo = root / "repo"
    code = main(
        [
            *("--ratio", "0.2", "--out", str(root / "out"), "--repo", str(repo)),
            *("--demo-set", str(root / "demo"), "--labelled", str(root / "labelled")),
            *("--max-steps", "2", "--batch", "2", "--demo-limit", "4", "--minutes", "1"),
            *("--speed-seconds", "0.05", "--speed-rounds", "1", "--no-progress"),
        ]
    )
    assert code == 0
    report = json.loads((root / "out" / "pruning.json").read_text())
    assert (root / "out" / "pruning.png").stat().st_size > 0
    return repo, report


def test_the_pruned_model_is_its_own_triton_model(pruned: tuple[Path, dict[str, Any]]) -> None:
    repo, _ = pruned

    assert sorted(p.name for p in repo.iterdir()) == [MODEL]
    config = read_config(repo / MODEL / "config.pbtxt")
    assert config.name == MODEL
    assert config.max_batch_size == 32
    assert [o.name for o in config.output] == ["probs", "embedding", "prototype_similarity"]
    assert [list(o.dims) for o in config.output] == [[5], [EMBEDDING_DIM], [5]]
    parameters = {key: value.string_value for key, value in config.parameters.items()}
    assert parameters["modstream.class_names"] == ",".join(CATEGORIES.values())
    assert parameters["modstream.source"].startswith("pruned from nsfwjs MobileNetV2")
    onnx_bytes = (repo / MODEL / "1" / "model.onnx").read_bytes()
    assert parameters[BACKBONE_SHA_PARAMETER] == hashlib.sha256(onnx_bytes).hexdigest()


def test_onnxruntime_runs_it_with_the_expected_outputs(
    pruned: tuple[Path, dict[str, Any]],
) -> None:
    repo, _ = pruned
    session = ort.InferenceSession(
        str(repo / MODEL / "1" / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    images = np.random.default_rng(0).integers(0, 256, (3, 224, 224, 3), dtype=np.uint8)

    probs, embedding, similarity = session.run(None, {"image": images})

    assert probs.shape == (3, 5)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    assert embedding.shape == (3, EMBEDDING_DIM)
    assert similarity.shape == (3, 5)


def test_the_report_compares_it_with_the_unpruned_model(
    pruned: tuple[Path, dict[str, Any]],
) -> None:
    _, report = pruned
    (row,) = report["pruned"]

    assert row["triton_model"] == MODEL
    assert row["params"] < report["unpruned"]["params"]
    assert row["flops"] < report["unpruned"]["flops"]
    assert set(row["speedup"]) == {"1", "32"}
    flips = row["held_out"]["action_flips"]["default"]
    assert flips["images"] == 4 + 2 + 4  # demo test images, held-out photos, clip-art
    low, high = flips["flip_percent_wilson95"]
    assert low <= flips["flip_percent"] <= high
    assert 0.0 <= row["held_out"]["top_class_agreement"] <= 1.0
    assert row["distillation"]["steps"] == 2


def test_heads_trained_on_the_unpruned_backbone_are_refused(
    pruned: tuple[Path, dict[str, Any]],
) -> None:
    repo, report = pruned
    served = read_config(repo / MODEL / "config.pbtxt").parameters[BACKBONE_SHA_PARAMETER]
    heads = HeadsDescriptor(
        heads_model="heads",
        version="1",
        backbone="nsfw_mobilenet_v2",
        backbone_sha256=report["unpruned"]["backbone_sha256"],
        embedding_dim=EMBEDDING_DIM,
        categories=(),
        trained_at=datetime(2026, 1, 1, tzinfo=UTC),
    )

    assert served.string_value != heads.backbone_sha256
    with pytest.raises(ModelMismatch, match="retrain the heads"):
        heads.check_backbone(served.string_value)
