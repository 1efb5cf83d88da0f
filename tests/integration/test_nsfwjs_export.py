"""Exporting into a model repository: parity-checked, atomic, and all-or-nothing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from training.nsfwjs import export, load
from training.nsfwjs.errors import ImportFailed
from training.nsfwjs.models import CATEGORIES, NsfwModel, parity_inputs
from training.prototypes import (
    LabelledImage,
    Prototypes,
    builtin_labelled_set,
    compute_prototypes,
)

pytestmark = pytest.mark.integration

MODEL = "mobilenet_v2"


@pytest.fixture(scope="module")
def model() -> NsfwModel:
    return load(MODEL)


@pytest.fixture(scope="module")
def labelled() -> list[LabelledImage]:
    return builtin_labelled_set()


@pytest.fixture(scope="module")
def prototypes(model: NsfwModel, labelled: list[LabelledImage]) -> Prototypes:
    return compute_prototypes(model, labelled, "builtin")


def _tree(repo: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(repo)): p.read_bytes() for p in sorted(repo.rglob("*")) if p.is_file()
    }


def test_export_writes_a_servable_model_directory(
    model: NsfwModel, prototypes: Prototypes, tmp_path: Path
) -> None:
    report = export.export_to_repository(model, tmp_path, prototypes)

    target = tmp_path / "nsfw_mobilenet_v2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["nsfw_mobilenet_v2"]
    assert sorted(str(p.relative_to(target)) for p in target.rglob("*") if p.is_file()) == [
        "1/model.onnx",
        "config.pbtxt",
        "labels.txt",
    ]
    assert report.max_probs_diff <= export.PROBS_TOLERANCE
    assert report.max_similarity_diff <= export.PROBS_TOLERANCE
    assert (target / "labels.txt").read_text().split() == list(CATEGORIES.values())
    config = (target / "config.pbtxt").read_text()
    assert 'name: "nsfw_mobilenet_v2"' in config
    assert 'key: "modstream.prototype_categories" value: { string_value: "safe_drawing,safe" }' in (
        config
    )
    # No labelled explicit images ship: those categories have no prototype.
    assert report.prototype_counts == {"safe_drawing": 48, "safe": 56}


def test_exported_similarity_is_the_cosine_to_each_prototype(
    model: NsfwModel, prototypes: Prototypes, tmp_path: Path
) -> None:
    export.export_to_repository(model, tmp_path, prototypes)
    session = ort.InferenceSession(str(tmp_path / "nsfw_mobilenet_v2" / "1" / "model.onnx"))
    images = parity_inputs(model.cfg, count=3)
    _, embedding, similarity = session.run(list(export.OUTPUTS), {"image": images})
    unit = embedding / np.linalg.norm(embedding, axis=1, keepdims=True)
    expected = unit @ prototypes.matrix.T
    assert similarity.shape == (3, 5)
    assert np.isnan(similarity[:, [1, 3, 4]]).all()
    np.testing.assert_allclose(similarity[:, [0, 2]], expected[:, [0, 2]], atol=1e-5)


def test_failed_parity_leaves_the_repository_as_it_was(
    model: NsfwModel,
    prototypes: Prototypes,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    export.export_to_repository(model, tmp_path, prototypes)
    before = _tree(tmp_path)

    def mismatch(served: export.ServedModel, onnx_path: Path) -> tuple[float, float, float]:
        raise ImportFailed(f"{onnx_path.name} of {served.model.cfg.name} does not match")

    monkeypatch.setattr(export, "check_parity", mismatch)
    with pytest.raises(ImportFailed, match="does not match"):
        export.export_to_repository(model, tmp_path, prototypes)

    assert _tree(tmp_path) == before, "a failed export changed or left files in the repository"


def test_cli_failure_is_one_line_and_non_zero(tmp_path: Path) -> None:
    empty_cache = tmp_path / "cache"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "training.nsfwjs.export",
            "--repo",
            str(tmp_path / "repo"),
            "--cache-dir",
            str(empty_cache),
            "--model",
            MODEL,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={"PATH": "/nonexistent"},
    )
    assert result.returncode == 1
    assert result.stderr.startswith("export failed: 'npm' was not found on PATH")
    assert result.stderr.count("\n") == 1
    assert not (tmp_path / "repo").exists() or not any((tmp_path / "repo").iterdir())
