"""Grad-CAM on the served backbone: exact gradients, heat maps where the evidence is, overlays.

The composites are deterministic: a scikit-image photo with a QR code (the ``qr_solicitation``
head) or part of a bench stand-in (a built-in category) at a known box. The bounds were set
from measurements with a margin (quoted at each test), not from what Grad-CAM should do.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import re
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx
import onnxruntime as ort
import pytest
import qrcode
from PIL import Image

from bench.samples import STANDINS_DIR, photo_image
from consumer.errors import ConfigError
from consumer.imaging.decode import ImageLimits, decode_image
from consumer.review.overlay import overlay_jpeg
from consumer.review.saliency import (
    HeatMap,
    SaliencyModel,
    SaliencyUnavailable,
    SaliencyUnsupported,
)
from tests.support.paths import TRITON_REPO

BACKBONE = "nsfw_mobilenet_v2"
MODEL_FILE = TRITON_REPO / BACKBONE / "1" / "model.onnx"
HEADS = TRITON_REPO / "heads"
SIZE = 224
LIMITS = ImageLimits(max_bytes=50_000_000, max_pixels=50_000_000)
Box = tuple[int, int, int, int]

pytestmark = pytest.mark.skipif(
    not MODEL_FILE.is_file(), reason="needs the backbone from ./scripts/setup.sh"
)


@dataclass(frozen=True)
class Reference:
    """The backbone under a session of its own, and its classifier re-done in numpy."""

    session: ort.InferenceSession
    feature_map: str
    gemms: list[tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]]

    def run(self, pixels: npt.NDArray[np.uint8]) -> tuple[Any, Any, Any]:
        probs, embedding, feature_map = self.session.run(
            ["probs", "embedding", self.feature_map], {"image": pixels[None]}
        )
        return feature_map[0].astype(np.float64), embedding[0].astype(np.float64), probs[0]

    def logits(self, embeddings: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        x = embeddings
        for index, (weight, bias) in enumerate(self.gemms):
            x = x @ weight.T + bias
            if index < len(self.gemms) - 1:
                x = np.maximum(x, 0.0)
        return x


@pytest.fixture(scope="module")
def model() -> SaliencyModel:
    return SaliencyModel.load(TRITON_REPO, BACKBONE)


@pytest.fixture(scope="module")
def reference() -> Reference:
    graph = onnx.load(str(MODEL_FILE))
    initializers = {t.name: onnx.numpy_helper.to_array(t) for t in graph.graph.initializer}
    gemms = [node for node in graph.graph.node if node.op_type == "Gemm"]
    assert [a.i for n in gemms for a in n.attribute if a.name == "transB"] == [1] * len(gemms)
    pool = [node for node in graph.graph.node if node.op_type == "AveragePool"][-1]
    graph.graph.output.append(
        onnx.helper.make_tensor_value_info(pool.input[0], onnx.TensorProto.FLOAT, None)
    )
    session = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
    weights = [
        (initializers[n.input[1]].astype(np.float64), initializers[n.input[2]].astype(np.float64))
        for n in gemms
    ]
    return Reference(session, pool.input[0], weights)


def served_heads() -> tuple[Any, dict[str, npt.NDArray[Any]], list[str]]:
    """The heads model Triton runs (its ``score``), its weights, and its category names."""
    spec = importlib.util.spec_from_file_location("served_heads", HEADS / "1" / "model.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    with np.load(HEADS / "1" / "heads.npz") as data:
        weights = {key: data[key] for key in ("weight", "bias", "normalize")}
    names = [c["name"] for c in json.loads((HEADS / "1" / "heads.json").read_text())["categories"]]
    return module, weights, names


def decoded(image: Image.Image) -> npt.NDArray[np.uint8]:
    """What the consumer feeds the model for ``image`` sent as PNG: the whole of it, stretched."""
    out = io.BytesIO()
    image.save(out, format="PNG")
    return decode_image(out.getvalue(), SIZE, LIMITS).pixels


def qr_composite(photo: str, box: Box, canvas: tuple[int, int]) -> npt.NDArray[np.uint8]:
    """``photo`` at ``canvas`` size with a scannable QR code filling ``box``, as decoded."""
    image = photo_image(photo).resize(canvas, Image.Resampling.BILINEAR)
    code = qrcode.make("https://pay.example/123456789", border=2).get_image().convert("RGB")
    left, top, right, bottom = box
    image.paste(code.resize((right - left, bottom - top), Image.Resampling.NEAREST), box[:2])
    return decoded(image)


def standin_composite(standin: str, photo: str, box: Box) -> npt.NDArray[np.uint8]:
    """``photo`` at the model's size with ``box`` of a stand-in pasted at the same place.

    A stand-in is a photo plus a perturbation made for this model at 224x224, which any resize
    would undo, so its pixels are pasted in the model's frame.
    """
    pixels = np.asarray(photo_image(photo).resize((SIZE, SIZE), Image.Resampling.BILINEAR)).copy()
    source = np.asarray(Image.open(STANDINS_DIR / f"{standin}.png").convert("RGB"))
    left, top, right, bottom = box
    pixels[top:bottom, left:right] = source[top:bottom, left:right]
    return pixels


def share(heat: HeatMap, box: Box) -> float:
    """Fraction of the heat map's mass inside ``box`` (model frame)."""
    left, top, right, bottom = box
    return float(heat.values[top:bottom, left:right].sum() / heat.values.sum())


def area(box: Box) -> float:
    left, top, right, bottom = box
    return (right - left) * (bottom - top) / SIZE**2


def to_model_frame(box: Box, canvas: tuple[int, int]) -> Box:
    sx, sy = SIZE / canvas[0], SIZE / canvas[1]
    left, top, right, bottom = box
    return round(left * sx), round(top * sy), round(right * sx), round(bottom * sy)


def grad_cam(feature_map: npt.NDArray[np.float64], gradient: npt.NDArray[np.float64]) -> Any:
    """Grad-CAM from a feature map and dy/d(embedding), upsampled bilinearly and scaled to 1."""
    weights = gradient / (feature_map.shape[1] * feature_map.shape[2])
    cam = np.maximum(np.einsum("k,kij->ij", weights, feature_map), 0.0).astype(np.float32)
    upsampled = Image.fromarray(cam, mode="F").resize((SIZE, SIZE), Image.Resampling.BILINEAR)
    values = np.maximum(np.asarray(upsampled), 0.0)
    return values / values.max() if values.max() > 0 else values


def finite_difference(
    function: Any, at: npt.NDArray[np.float64], step: float = 1e-4
) -> npt.NDArray[np.float64]:
    """Central differences of a scalar function of a vector, one coordinate per row."""
    bumps = np.eye(len(at)) * step
    result: npt.NDArray[np.float64] = (function(at + bumps) - function(at - bumps)) / (2 * step)
    return result


# --- gradients --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def rocket_with_code() -> npt.NDArray[np.uint8]:
    return qr_composite("rocket", (0, 0, 160, 160), (480, 480))


def test_the_numpy_classifier_reproduces_the_onnx_probs(
    reference: Reference, rocket_with_code: npt.NDArray[np.uint8]
) -> None:
    for pixels in (rocket_with_code, np.full((SIZE, SIZE, 3), 128, np.uint8)):
        _, embedding, probs = reference.run(pixels)
        logits = reference.logits(embedding[None])[0]
        softmax = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
        np.testing.assert_allclose(softmax, probs, atol=1e-5)


@pytest.mark.parametrize(
    "category", ["safe_drawing", "sexual_explicit_drawn", "safe", "sexual_explicit", "suggestive"]
)
def test_a_class_heat_map_is_grad_cam_of_the_finite_difference_gradient(
    model: SaliencyModel,
    reference: Reference,
    rocket_with_code: npt.NDArray[np.uint8],
    category: str,
) -> None:
    index = model.categories().index(category)
    feature_map, embedding, probs = reference.run(rocket_with_code)
    gradient = finite_difference(lambda e: reference.logits(e)[:, index], embedding)

    heat = model.explain(rocket_with_code, category)

    assert heat.category == category
    assert heat.score == pytest.approx(float(probs[index]), abs=1e-6)
    assert heat.values.shape == (SIZE, SIZE)
    assert heat.values.dtype == np.float32
    assert heat.values.min() >= 0.0
    # Zero everywhere when nothing in the image speaks for the category.
    assert heat.values.max() in (pytest.approx(0.0), pytest.approx(1.0))
    np.testing.assert_allclose(heat.values, grad_cam(feature_map, gradient), atol=1e-4)


@pytest.mark.parametrize("cosine", [False, True], ids=["served-heads", "cosine-heads"])
def test_a_head_heat_map_is_grad_cam_of_the_finite_difference_gradient(
    model: SaliencyModel,
    altered_repository: Path,
    reference: Reference,
    rocket_with_code: npt.NDArray[np.uint8],
    cosine: bool,
) -> None:
    served, weights, names = served_heads()
    if cosine:
        model = SaliencyModel.load(altered_repository, BACKBONE)
        weights["normalize"] = np.ones_like(weights["normalize"])
    index = names.index("qr_solicitation")
    feature_map, embedding, _ = reference.run(rocket_with_code)
    w, b = weights["weight"][:, index].astype(np.float64), float(weights["bias"][index])
    normalize = bool(weights["normalize"][index])

    def logit(e: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        scale = np.linalg.norm(e, axis=-1) if normalize else 1.0
        result: npt.NDArray[np.float64] = e @ w / scale + b
        return result

    heat = model.explain(rocket_with_code, "qr_solicitation", "1")

    served_score = served.score(embedding[None].astype(np.float32), weights)[0, index]
    assert heat.score == pytest.approx(float(served_score), abs=1e-5)
    gradient = finite_difference(logit, embedding, step=1e-3)
    np.testing.assert_allclose(heat.values, grad_cam(feature_map, gradient), atol=1e-4)


# --- the evidence is where the heat is ------------------------------------------------------

QR_CANVAS = (480, 480)
# (photo, box of the code, an equal box elsewhere): the corners' mirror images through the
# centre, and for the centre, the box above it.
QR_CASES: dict[str, tuple[str, Box, Box]] = {
    "rocket-top-left": ("rocket", (24, 24, 184, 184), (296, 296, 456, 456)),
    "rocket-top-right": ("rocket", (296, 24, 456, 184), (24, 296, 184, 456)),
    "rocket-bottom-left": ("rocket", (24, 296, 184, 456), (296, 24, 456, 184)),
    "rocket-bottom-right": ("rocket", (296, 296, 456, 456), (24, 24, 184, 184)),
    "rocket-centre": ("rocket", (160, 160, 320, 320), (160, 0, 320, 160)),
    "horse-centre": ("horse", (160, 160, 320, 320), (160, 0, 320, 160)),
}


@pytest.mark.parametrize("case", list(QR_CASES))
def test_a_qr_code_heat_map_sits_on_the_code(model: SaliencyModel, case: str) -> None:
    photo, box, elsewhere = QR_CASES[case]
    pixels = qr_composite(photo, box, QR_CANVAS)
    summary = json.loads((HEADS / "1" / "heads.json").read_text())["summary"]

    heat = model.explain(pixels, "qr_solicitation", "1")

    assert heat.score >= summary["qr_solicitation.review_threshold"], "the head must fire"
    inside = to_model_frame(box, QR_CANVAS)
    # Measured: 2.1-3.8 times the box's share of the image.
    assert share(heat, inside) >= 1.5 * area(inside)
    # Measured: 2.4-21 times the mass of the box elsewhere.
    assert share(heat, inside) >= 1.5 * share(heat, to_model_frame(elsewhere, QR_CANVAS))


HALF = SIZE // 2
QUADRANTS: dict[str, Box] = {
    "top-left": (0, 0, HALF, HALF),
    "top-right": (HALF, 0, SIZE, HALF),
    "bottom-left": (0, HALF, HALF, SIZE),
    "bottom-right": (HALF, HALF, SIZE, SIZE),
}
STANDIN_CASES = [
    ("explicit-high", "sexual_explicit", "horse", "top-left"),
    ("explicit-high", "sexual_explicit", "rocket", "top-right"),
    ("explicit-high", "sexual_explicit", "coffee", "bottom-left"),
    ("suggestive-high", "suggestive", "coffee", "top-right"),
    ("suggestive-high", "suggestive", "horse", "bottom-right"),
    ("drawn-high", "sexual_explicit_drawn", "horse", "bottom-left"),
]


@pytest.mark.parametrize(("standin", "category", "photo", "placement"), STANDIN_CASES)
def test_a_stand_in_heat_map_sits_on_the_stand_in(
    model: SaliencyModel, standin: str, category: str, photo: str, placement: str
) -> None:
    box = QUADRANTS[placement]
    pixels = standin_composite(standin, photo, box)

    heat = model.explain(pixels, category)

    assert heat.score > 0.5, "the category must be the model's top one on the composite"
    # Measured: 2.4-3.8 times the quadrant's share (4 would be all of the mass).
    assert share(heat, box) >= 2.0 * area(box)
    # Measured: 3.1-24 times the mass of any other quadrant.
    others = [share(heat, other) for p, other in QUADRANTS.items() if p != placement]
    assert share(heat, box) >= 2.0 * max(others)


# --- refusals -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def altered_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The backbone (linked), heads version 1 as cosine heads, and version 2 with another
    backbone's sha256."""
    root = tmp_path_factory.mktemp("repository")
    (root / BACKBONE).symlink_to(TRITON_REPO / BACKBONE, target_is_directory=True)
    for version in ("1", "2"):
        shutil.copytree(
            HEADS / "1", root / "heads" / version, ignore=shutil.ignore_patterns("*.pyc")
        )
    with np.load(HEADS / "1" / "heads.npz") as data:
        arrays = {key: data[key] for key in data.files}
    arrays["normalize"] = np.ones_like(arrays["normalize"])
    np.savez(root / "heads" / "1" / "heads.npz", **arrays)
    descriptor = json.loads((HEADS / "1" / "heads.json").read_text())
    descriptor.update(version="2", backbone_sha256="0" * 64)
    (root / "heads" / "2" / "heads.json").write_text(json.dumps(descriptor))
    return root


def test_heads_trained_on_another_backbone_are_refused(altered_repository: Path) -> None:
    model = SaliencyModel.load(altered_repository, BACKBONE)
    pixels = np.zeros((SIZE, SIZE, 3), np.uint8)

    with pytest.raises(SaliencyUnavailable, match="retrain the heads"):
        model.explain(pixels, "qr_solicitation", "2")
    with pytest.raises(SaliencyUnavailable, match="retrain the heads"):
        model.categories("2")
    assert model.explain(pixels, "safe", None).category == "safe"


def test_unknown_categories_and_versions_are_refused(
    model: SaliencyModel, rocket_with_code: npt.NDArray[np.uint8]
) -> None:
    with pytest.raises(SaliencyUnavailable, match="no category 'nudity'"):
        model.explain(rocket_with_code, "nudity", "1")
    with pytest.raises(SaliencyUnavailable, match="choose one of"):
        model.explain(rocket_with_code, "qr_solicitation")
    for version in ("99", "../heads/1", ""):
        with pytest.raises(SaliencyUnavailable, match="heads version"):
            model.explain(rocket_with_code, "qr_solicitation", version)
    with pytest.raises(ValueError, match="pixels must be uint8"):
        model.explain(rocket_with_code[:100], "safe")


def test_the_categories_are_the_classes_then_the_heads(model: SaliencyModel) -> None:
    classes = ["safe_drawing", "sexual_explicit_drawn", "safe", "sexual_explicit", "suggestive"]
    assert model.categories() == classes
    assert model.categories("1") == [*classes, "qr_solicitation", "contact_overlay", "payment_card"]
    assert model.name == BACKBONE
    assert model.input_size == SIZE


def test_a_backbone_file_its_config_does_not_name_is_refused(tmp_path: Path) -> None:
    model_dir = tmp_path / BACKBONE
    (model_dir / "1").mkdir(parents=True)
    (model_dir / "1" / "model.onnx").symlink_to(MODEL_FILE)
    config = (TRITON_REPO / BACKBONE / "config.pbtxt").read_text()
    altered = re.sub(
        r'(backbone_sha256" value: \{ string_value: ")[0-9a-f]+', r"\g<1>" + "1" * 64, config
    )
    assert altered != config
    (model_dir / "config.pbtxt").write_text(altered)

    with pytest.raises(ConfigError, match="export the backbone again"):
        SaliencyModel.load(tmp_path, BACKBONE)


def test_the_ensemble_leads_to_its_backbone() -> None:
    model = SaliencyModel.load(TRITON_REPO, "moderation")
    assert model.name == BACKBONE
    # Decisions name the ensemble the consumer called; its heat maps are this backbone's.
    assert model.explains("moderation")
    assert model.explains(BACKBONE)
    assert not model.explains("nsfw_inception_v3")


@pytest.mark.skipif(
    not (TRITON_REPO / "nsfw_mobilenet_v2_mid" / "1" / "model.onnx").is_file(),
    reason="needs nsfw_mobilenet_v2_mid from ./scripts/setup.sh",
)
def test_a_backbone_without_a_global_pool_feeding_the_embedding_is_refused(
    tmp_path: Path,
) -> None:
    name = "nsfw_mobilenet_v2_mid"
    source = TRITON_REPO / name / "1" / "model.onnx"
    (tmp_path / name / "1").mkdir(parents=True)
    (tmp_path / name / "1" / "model.onnx").symlink_to(source)
    sha = hashlib.sha256(source.read_bytes()).hexdigest()
    config = (TRITON_REPO / name / "config.pbtxt").read_text()
    (tmp_path / name / "config.pbtxt").write_text(
        config
        + f'parameters {{ key: "modstream.backbone_sha256" value: {{ string_value: "{sha}" }} }}\n'
    )

    with pytest.raises(SaliencyUnsupported, match="not from an average pool") as refused:
        SaliencyModel.load(tmp_path, name)
    assert isinstance(refused.value, ConfigError)


# --- concurrency and overlays ---------------------------------------------------------------


def test_concurrent_explanations_match_serial_ones(
    model: SaliencyModel, rocket_with_code: npt.NDArray[np.uint8]
) -> None:
    requests = [
        ("suggestive", None),
        ("qr_solicitation", "1"),
        ("safe", "1"),
        ("payment_card", "1"),
    ]
    serial = [model.explain(rocket_with_code, c, v).values for c, v in requests]
    results: dict[int, npt.NDArray[np.float32]] = {}

    def work(index: int) -> None:
        category, version = requests[index]
        results[index] = model.explain(rocket_with_code, category, version).values

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(requests))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for index, values in enumerate(serial):
        np.testing.assert_array_equal(results[index], values)


def test_an_overlay_is_a_jpeg_of_the_displayed_size(
    model: SaliencyModel, rocket_with_code: npt.NDArray[np.uint8]
) -> None:
    display = photo_image("rocket").resize((640, 360))
    heat = model.explain(rocket_with_code, "qr_solicitation", "1")

    data = overlay_jpeg(display, heat)

    shown = Image.open(io.BytesIO(data))
    assert shown.format == "JPEG"
    assert shown.size == (640, 360)
    difference = np.abs(np.asarray(shown, np.int16) - np.asarray(display, np.int16))
    assert difference.mean() > 5, "a heat map with evidence must show"


def test_an_overlay_of_no_evidence_leaves_the_image_as_it_was() -> None:
    display = photo_image("coffee").resize((300, 200))
    heat = HeatMap(np.zeros((SIZE, SIZE), np.float32), "safe", 0.1)
    plain = io.BytesIO()
    display.save(plain, format="JPEG", quality=85)

    shown = Image.open(io.BytesIO(overlay_jpeg(display, heat, quality=85)))

    np.testing.assert_array_equal(np.asarray(shown), np.asarray(Image.open(plain)))
