"""``modstream train heads`` end to end on a small slice of the demo set: embeddings through
the real backbone file Triton serves, cached, heads trained, report written."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from consumer.imaging.decode import decode_image
from consumer.runtime.settings import TritonSettings
from tests.support.paths import TRITON_REPO
from training.heads import report
from training.heads.cli import TrainOptions, train_command
from training.heads.data import load_dataset
from training.heads.demo_set import generate
from training.heads.embed import Backbone, default_limits, embed_images

pytestmark = pytest.mark.integration

BACKBONE = TritonSettings().model_name


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("demo-heads")
    generate(out, seed=3, train_per_class=12, test_per_class=8, workers=2)
    return out


@pytest.fixture(scope="module")
def backbone() -> Backbone:
    if not (TRITON_REPO / BACKBONE / "1" / "model.onnx").is_file():
        pytest.fail(
            f"{TRITON_REPO / BACKBONE} is missing: run ./scripts/setup.sh (or "
            "`python -m training.nsfwjs.export --repo triton_repo`) to generate it"
        )
    return Backbone.from_repo(TRITON_REPO, BACKBONE)


def test_embeddings_are_the_served_backbones_and_cached(
    demo: Path, backbone: Backbone, tmp_path: Path
) -> None:
    images = [row.image for row in load_dataset(demo)]
    first = embed_images(images, backbone, cache_dir=tmp_path, progress=False)
    assert first.computed == len(set(images))
    assert first.embeddings.shape == (len(images), 1280)
    assert not first.rejected

    started = time.perf_counter()
    second = embed_images(images, backbone, cache_dir=tmp_path, progress=False)
    cached_seconds = time.perf_counter() - started
    assert (second.computed, second.cached) == (0, len(set(images)))
    np.testing.assert_array_equal(second.embeddings, first.embeddings)
    assert cached_seconds < first.seconds

    # The same numbers as the served file run on the consumer's decode of the image.
    session = ort.InferenceSession(str(backbone.path), providers=["CPUExecutionProvider"])
    pixels = decode_image(images[0], backbone.input_size, default_limits()).pixels[None]
    (served,) = session.run(["embedding"], {session.get_inputs()[0].name: pixels})
    np.testing.assert_allclose(first.embeddings[0], served[0], rtol=1e-5, atol=1e-6)


def test_train_heads_writes_the_report_and_the_model_card_block(
    demo: Path, backbone: Backbone, tmp_path: Path
) -> None:
    card = tmp_path / "README.md"
    card.write_text("# Model card\n")
    options = TrainOptions(
        data=demo,
        repo=TRITON_REPO,
        out=tmp_path / "results",
        card=card,
        cache_dir=tmp_path / "cache",
        sizes=(5, 10),
        draws=2,
        bootstrap_draws=200,
        progress=False,
    )
    assert train_command(options) == 0

    built = json.loads((tmp_path / "results" / report.JSON_NAME).read_text())
    assert tuple(built) == report.REPORT_KEYS
    assert built["backbone"]["sha256"] == backbone.sha256
    assert built["dataset"]["images"] == {"train": 60, "test": 40}
    assert "photo:chelsea" in built["dataset"]["held_out_in_test"]["backgrounds"]
    assert set(built["categories"]) == {"qr_solicitation", "contact_overlay", "payment_card"}
    assert built["categories"]["qr_solicitation"]["tenant"] is None
    assert built["categories"]["payment_card"]["tenant"] == "tickets"
    for entry in built["categories"].values():
        assert entry["head"] in {"logistic", "prototype", "pulled"}
        assert entry["test"]["positives"] == 8
    assert built["timings"]["embedding"]["seconds_per_image"] > 0
    assert built["timings"]["tenant_training"]["labels_per_class"] == 100
    for name in (report.PR_PLOT, report.LEARNING_PLOT):
        assert (tmp_path / "results" / name).stat().st_size > 1000
    text = card.read_text()
    assert text.startswith("# Model card\n")
    assert text.count(report.CARD_BEGIN) == 1
    assert "| payment_card | tickets |" in text
