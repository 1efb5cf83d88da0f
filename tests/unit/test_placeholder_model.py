"""The PLACEHOLDER colour-heuristic classifier and the model repository generated from it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from training import placeholder
from training.placeholder import (
    CLASS_NAMES,
    MODEL_NAME,
    ParityError,
    reference_forward,
    solid_image,
    write_model_repository,
)

COMMITTED = Path(__file__).resolve().parents[2] / "triton_repo" / MODEL_NAME


def _files(root: Path) -> dict[str, bytes]:
    return {
        path.relative_to(root).as_posix(): path.read_bytes()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


def _probs_of(rgb: tuple[int, int, int]) -> npt.NDArray[np.float32]:
    probs: npt.NDArray[np.float32] = reference_forward(solid_image(rgb)[None])[0][0]
    return probs


def test_regenerating_gives_the_committed_files_byte_for_byte(tmp_path: Path) -> None:
    write_model_repository(tmp_path)

    regenerated = _files(tmp_path / MODEL_NAME)
    assert set(regenerated) == {"config.pbtxt", "labels.txt", "1/model.onnx"}
    assert regenerated == _files(COMMITTED), "run `python -m training.placeholder` and commit"


def test_rewriting_replaces_the_model_and_leaves_nothing_else(tmp_path: Path) -> None:
    write_model_repository(tmp_path)
    (tmp_path / MODEL_NAME / "stale.txt").write_text("from an older build")

    write_model_repository(tmp_path)

    assert [p.name for p in tmp_path.iterdir()] == [MODEL_NAME]
    assert not (tmp_path / MODEL_NAME / "stale.txt").exists()


def test_failed_parity_check_keeps_the_previous_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_model_repository(tmp_path)
    before = _files(tmp_path / MODEL_NAME)

    def broken_parity(model_path: Path) -> float:
        raise ParityError(f"{model_path} is off")

    monkeypatch.setattr(placeholder, "check_parity", broken_parity)
    with pytest.raises(ParityError):
        write_model_repository(tmp_path)

    assert [p.name for p in tmp_path.iterdir()] == [MODEL_NAME]
    assert _files(tmp_path / MODEL_NAME) == before


def test_check_parity_catches_a_model_that_computes_something_else(tmp_path: Path) -> None:
    model = placeholder.build_model()
    for tensor in model.graph.initializer:
        if tensor.name == "class_bias":
            tensor.CopyFrom(
                onnx.numpy_helper.from_array(np.full(5, 0.1, dtype=np.float32), "class_bias")
            )
    path = tmp_path / "model.onnx"
    path.write_bytes(model.SerializeToString())

    with pytest.raises(ParityError, match="differs from reference_forward"):
        placeholder.check_parity(path)


def test_onnx_interface_matches_the_real_model_contract() -> None:
    model = placeholder.build_model()

    def dims(value: onnx.ValueInfoProto) -> list[str | int]:
        return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]

    (image,) = model.graph.input
    probs, embedding = model.graph.output
    assert (image.name, image.type.tensor_type.elem_type) == ("image", onnx.TensorProto.UINT8)
    assert dims(image) == ["batch", 224, 224, 3]
    assert (probs.name, dims(probs)) == ("probs", ["batch", 5])
    assert (embedding.name, dims(embedding)) == ("embedding", ["batch", 16])
    assert model.ir_version == placeholder.IR_VERSION
    assert [(o.domain, o.version) for o in model.opset_import] == [("", placeholder.OPSET)]
    assert "PLACEHOLDER" in model.doc_string


@pytest.mark.parametrize(("name", "colour_and_class"), list(placeholder.SOLID_COLOURS.items()))
def test_solid_colours_have_predictable_top_classes(
    name: str, colour_and_class: tuple[tuple[int, int, int], str]
) -> None:
    colour, expected = colour_and_class
    probs = _probs_of(colour)

    assert CLASS_NAMES[int(np.argmax(probs))] == expected
    if name == "grey":
        assert probs.min() > 0.1
        assert probs.max() < 0.5
    else:
        assert probs.max() > 0.8


def test_muddy_red_is_still_confidently_porn() -> None:
    assert _probs_of((200, 30, 30))[CLASS_NAMES.index("porn")] > 0.8


def test_intermediate_colours_give_intermediate_scores() -> None:
    steps = np.linspace([255, 0, 0], [128, 128, 128], 9).round().astype(np.uint8)
    images = np.stack([solid_image((int(r), int(g), int(b))) for r, g, b in steps])
    porn = reference_forward(images)[0][:, CLASS_NAMES.index("porn")]

    assert porn[0] > 0.95
    assert porn[-1] < 0.3
    # The red detector is zero once red no longer beats green plus blue; from there on the
    # colour reads as grey.
    assert np.all(np.diff(porn) <= 0)
    assert ((porn > 0.3) & (porn < 0.8)).any()

    orange = _probs_of((255, 128, 0))
    assert 0.3 < orange[CLASS_NAMES.index("porn")] < 0.6
    assert 0.3 < orange[CLASS_NAMES.index("sexy")] < 0.6


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), batch=st.integers(1, 4))
def test_reference_outputs_are_distributions_and_batch_independent(seed: int, batch: int) -> None:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(batch, 224, 224, 3), dtype=np.uint8)

    probs, embedding = reference_forward(images)

    assert probs.dtype == embedding.dtype == np.float32
    assert probs.shape == (batch, 5)
    assert embedding.shape == (batch, 16)
    assert np.all(probs >= 0)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-6)
    assert np.all(embedding >= 0)
    alone_probs, alone_embedding = reference_forward(images[-1:])
    np.testing.assert_array_equal(alone_probs[0], probs[-1])
    np.testing.assert_array_equal(alone_embedding[0], embedding[-1])


def test_only_the_colour_distribution_matters_not_the_layout() -> None:
    rng = np.random.default_rng(3)
    image = rng.integers(0, 256, size=(224, 224, 3), dtype=np.uint8)
    shuffled = rng.permutation(image.reshape(-1, 3)).reshape(224, 224, 3)

    probs, embedding = reference_forward(np.stack([image, shuffled]))

    np.testing.assert_allclose(embedding[0], embedding[1], atol=1e-6)
    np.testing.assert_allclose(probs[0], probs[1], atol=1e-6)


@pytest.mark.parametrize(
    "images",
    [
        pytest.param(np.zeros((1, 224, 224, 3), dtype=np.float32), id="float"),
        pytest.param(np.zeros((224, 224, 3), dtype=np.uint8), id="no-batch"),
        pytest.param(np.zeros((1, 224, 224, 4), dtype=np.uint8), id="rgba"),
        pytest.param(np.zeros((1, 200, 224, 3), dtype=np.uint8), id="not-224"),
    ],
)
def test_reference_rejects_inputs_the_model_would_reject(images: npt.NDArray[np.generic]) -> None:
    with pytest.raises(ValueError, match="expected uint8 images"):
        reference_forward(images)
