"""Exporting into a model repository: parity-checked, atomic, and all-or-nothing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from training.nsfwjs import export, load
from training.nsfwjs.errors import ImportFailed
from training.nsfwjs.models import NsfwModel

pytestmark = pytest.mark.integration

MODEL = "mobilenet_v2"


@pytest.fixture(scope="module")
def model() -> NsfwModel:
    return load(MODEL)


def _tree(repo: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(repo)): p.read_bytes() for p in sorted(repo.rglob("*")) if p.is_file()
    }


def test_export_writes_a_servable_model_directory(model: NsfwModel, tmp_path: Path) -> None:
    report = export.export_to_repository(model, tmp_path)

    target = tmp_path / "nsfw_mobilenet_v2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["nsfw_mobilenet_v2"]
    assert sorted(str(p.relative_to(target)) for p in target.rglob("*") if p.is_file()) == [
        "1/model.onnx",
        "config.pbtxt",
        "labels.txt",
    ]
    assert report.max_probs_diff <= export.PROBS_TOLERANCE
    assert (target / "labels.txt").read_text().split() == list(export.CATEGORIES.values())
    assert 'name: "nsfw_mobilenet_v2"' in (target / "config.pbtxt").read_text()


def test_failed_parity_leaves_the_repository_as_it_was(
    model: NsfwModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    export.export_to_repository(model, tmp_path)
    before = _tree(tmp_path)

    def mismatch(model: NsfwModel, onnx_path: Path) -> tuple[float, float]:
        raise ImportFailed(f"{onnx_path.name} of {model.cfg.name} does not match")

    monkeypatch.setattr(export, "check_parity", mismatch)
    with pytest.raises(ImportFailed, match="does not match"):
        export.export_to_repository(model, tmp_path)

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
