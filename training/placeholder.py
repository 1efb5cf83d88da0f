"""PLACEHOLDER classifier: a colour heuristic that stands in for the pretrained nsfwjs model.

This is NOT a moderation model. It looks at nothing but the average colour of an image, with
weights written by hand, so that the whole pipeline (Kafka, decoding, Triton, policies) can be
built and tested before the real nsfwjs weights are imported. It shares the real model's
interface exactly, so swapping it out changes no code:

- input ``image``: UINT8, NHWC, ``[batch, 224, 224, 3]``, RGB; scaling to [0, 1] happens inside
  the graph, so clients send 1 byte per channel instead of 4;
- output ``probs``: FP32 ``[batch, 5]``, a softmax over :data:`CLASS_NAMES`;
- output ``embedding``: FP32 ``[batch, 16]``, the pooled features the class head reads.

The graph is ``x / 255 -> 1x1 "conv" (MatMul 3x16 + bias) -> Relu -> mean over H, W
(embedding) -> MatMul 16x5 + bias -> Softmax``. Solid colours give confident, predictable
answers, which is what the integration tests lean on:

==========  ===============  ==============================
colour      top class        p(top)
==========  ===============  ==============================
red         porn             0.99
green       neutral          0.99
blue        drawing          0.99
yellow      sexy             0.99
magenta     hentai           0.99
cyan        neutral          0.59 (drawing 0.36)
white       neutral          0.75
mid-grey    neutral          0.29 (the rest about 0.18 each)
==========  ===============  ==============================

Colours in between give scores in between: orange splits between porn and sexy, and blending
red towards grey lowers p(porn) smoothly.

Run ``python -m training.placeholder --repo triton_repo`` to (re)write the model repository.
The output is byte-for-byte deterministic, so a test can compare the committed files with a
fresh build.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Final

import numpy as np
import numpy.typing as npt
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

logger = logging.getLogger(__name__)

MODEL_NAME: Final = "modstream_placeholder"
MODEL_VERSION: Final = 1
CLASS_NAMES: Final = ("drawing", "hentai", "neutral", "porn", "sexy")
INPUT_NAME: Final = "image"
PROBS_NAME: Final = "probs"
EMBEDDING_NAME: Final = "embedding"
INPUT_SIZE: Final = 224
EMBEDDING_DIM: Final = 16
MAX_BATCH_SIZE: Final = 32

# Opset 17 / IR 8 load in every onnxruntime that NVIDIA's Triton images of the last few years
# ship; a newer IR version would be refused by older ones for no benefit here.
OPSET: Final = 17
IR_VERSION: Final = 8

PARITY_TOLERANCE: Final = 1e-5

# Logit a fully saturated colour detector adds to its class: e^6 against the other four logits
# puts p(top) near 0.99 for pure colours and still above 0.8 for muddier ones like (200, 30, 30).
_CONFIDENCE: Final = 6.0
# A small prior for "neutral", so images with no dominant hue (grey, black) lean neutral while
# staying spread out.
_NEUTRAL_PRIOR: Final = 0.5

# One row per hidden unit: name, weights on (r, g, b) in [0, 1], bias. Relu follows, so each unit
# is a detector that is zero unless its colour is present. The secondary colours need a bias of
# -1 because, with a single linear layer, "red AND green" can only be told apart from "red" by
# demanding that the sum of both exceed 1.
_HIDDEN_UNITS: Final[tuple[tuple[str, float, float, float, float], ...]] = (
    ("red", 1.0, -1.0, -1.0, 0.0),
    ("green", -1.0, 1.0, -1.0, 0.0),
    ("blue", -1.0, -1.0, 1.0, 0.0),
    ("yellow", 1.0, 1.0, -2.0, -1.0),
    ("magenta", 1.0, -2.0, 1.0, -1.0),
    ("cyan", -2.0, 1.0, 1.0, -1.0),
    ("brightness", 1.0 / 3.0, 1.0 / 3.0, 1.0 / 3.0, 0.0),
    ("darkness", -1.0 / 3.0, -1.0 / 3.0, -1.0 / 3.0, 1.0),
    ("r", 1.0, 0.0, 0.0, 0.0),
    ("g", 0.0, 1.0, 0.0, 0.0),
    ("b", 0.0, 0.0, 1.0, 0.0),
    ("warm", 1.0, 0.0, -1.0, 0.0),
    ("cool", -1.0, 0.0, 1.0, 0.0),
    ("red_over_green", 1.0, -1.0, 0.0, 0.0),
    ("green_over_red", -1.0, 1.0, 0.0, 0.0),
    ("white", 1.0, 1.0, 1.0, -2.0),
)

# Which hidden units vote for which class. Units not listed only shape the embedding, so that
# it carries more than the five class scores do.
_CLASS_VOTES: Final[dict[str, dict[str, float]]] = {
    "red": {"porn": _CONFIDENCE},
    "green": {"neutral": _CONFIDENCE},
    "blue": {"drawing": _CONFIDENCE},
    "yellow": {"sexy": _CONFIDENCE},
    "magenta": {"hentai": _CONFIDENCE},
    "cyan": {"drawing": _CONFIDENCE / 2, "neutral": _CONFIDENCE / 2},
    "white": {"neutral": 2.0},
}

#: Named RGB colours with the class the placeholder puts on top; handy for tests and demos.
SOLID_COLOURS: Final[dict[str, tuple[tuple[int, int, int], str]]] = {
    "red": ((255, 0, 0), "porn"),
    "green": ((0, 255, 0), "neutral"),
    "blue": ((0, 0, 255), "drawing"),
    "yellow": ((255, 255, 0), "sexy"),
    "magenta": ((255, 0, 255), "hentai"),
    "grey": ((128, 128, 128), "neutral"),
}

Float32Array = npt.NDArray[np.float32]
UInt8Array = npt.NDArray[np.uint8]


class ParityError(RuntimeError):
    """The exported ONNX file does not compute what :func:`reference_forward` computes."""


def _hidden_params() -> tuple[Float32Array, Float32Array]:
    weight = np.array([[r, g, b] for _, r, g, b, _ in _HIDDEN_UNITS], dtype=np.float32).T
    bias = np.array([unit[4] for unit in _HIDDEN_UNITS], dtype=np.float32)
    return np.ascontiguousarray(weight), bias


def _class_params() -> tuple[Float32Array, Float32Array]:
    unit_index = {unit[0]: i for i, unit in enumerate(_HIDDEN_UNITS)}
    weight = np.zeros((EMBEDDING_DIM, len(CLASS_NAMES)), dtype=np.float32)
    for unit, votes in _CLASS_VOTES.items():
        for class_name, vote in votes.items():
            weight[unit_index[unit], CLASS_NAMES.index(class_name)] = vote
    bias = np.zeros(len(CLASS_NAMES), dtype=np.float32)
    bias[CLASS_NAMES.index("neutral")] = _NEUTRAL_PRIOR
    return weight, bias


def solid_image(rgb: tuple[int, int, int], size: int = INPUT_SIZE) -> UInt8Array:
    """Return one ``[size, size, 3]`` uint8 image filled with ``rgb``."""
    image = np.empty((size, size, 3), dtype=np.uint8)
    image[...] = np.asarray(rgb, dtype=np.uint8)
    return image


def reference_forward(images: npt.NDArray[np.generic]) -> tuple[Float32Array, Float32Array]:
    """Compute ``(probs, embedding)`` for a ``[batch, 224, 224, 3]`` uint8 batch with numpy.

    Raises ValueError if ``images`` is not a uint8 array of that shape.
    """
    expected = (INPUT_SIZE, INPUT_SIZE, 3)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != expected:
        raise ValueError(
            f"expected uint8 images of shape [batch, {INPUT_SIZE}, {INPUT_SIZE}, 3], "
            f"got {images.dtype} {list(images.shape)}"
        )
    hidden_weight, hidden_bias = _hidden_params()
    class_weight, class_bias = _class_params()
    pixels = images.astype(np.float32) / np.float32(255.0)
    hidden = np.maximum(pixels @ hidden_weight + hidden_bias, np.float32(0.0))
    # The exact mean (float64 accumulation), not numpy's float32 one, which drifts by about
    # 5e-4 over 50176 pixels: the reference should not share the graph's rounding choices.
    embedding = hidden.mean(axis=(1, 2), dtype=np.float64).astype(np.float32)
    logits = embedding @ class_weight + class_bias
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs = (shifted / shifted.sum(axis=1, keepdims=True)).astype(np.float32)
    return probs, embedding


def build_model() -> onnx.ModelProto:
    """Return the placeholder as an ONNX model (see the module docstring for the graph)."""
    hidden_weight, hidden_bias = _hidden_params()
    class_weight, class_bias = _class_params()
    initializers = [
        numpy_helper.from_array(np.array(255.0, dtype=np.float32), "pixel_scale"),
        numpy_helper.from_array(hidden_weight, "colour_weight"),
        numpy_helper.from_array(hidden_bias, "colour_bias"),
        numpy_helper.from_array(class_weight, "class_weight"),
        numpy_helper.from_array(class_bias, "class_bias"),
    ]
    nodes = [
        helper.make_node("Cast", [INPUT_NAME], ["pixels"], to=TensorProto.FLOAT),
        helper.make_node("Div", ["pixels", "pixel_scale"], ["pixels_unit"]),
        helper.make_node("MatMul", ["pixels_unit", "colour_weight"], ["colour_linear"]),
        helper.make_node("Add", ["colour_linear", "colour_bias"], ["colour_pre"]),
        helper.make_node("Relu", ["colour_pre"], ["colour"]),
        # Two short means instead of one over H and W at once: onnxruntime's single float32
        # sum over 50176 pixels drifts by about 6e-5 (and runs 3x slower at batch 32), the
        # two-stage one stays within 2e-7 of the exact mean.
        helper.make_node("ReduceMean", ["colour"], ["colour_row_mean"], axes=[2], keepdims=0),
        helper.make_node("ReduceMean", ["colour_row_mean"], [EMBEDDING_NAME], axes=[1], keepdims=0),
        helper.make_node("MatMul", [EMBEDDING_NAME, "class_weight"], ["class_linear"]),
        helper.make_node("Add", ["class_linear", "class_bias"], ["logits"]),
        helper.make_node("Softmax", ["logits"], [PROBS_NAME], axis=-1),
    ]
    graph = helper.make_graph(
        nodes,
        MODEL_NAME,
        inputs=[
            helper.make_tensor_value_info(
                INPUT_NAME, TensorProto.UINT8, ["batch", INPUT_SIZE, INPUT_SIZE, 3]
            )
        ],
        outputs=[
            helper.make_tensor_value_info(
                PROBS_NAME, TensorProto.FLOAT, ["batch", len(CLASS_NAMES)]
            ),
            helper.make_tensor_value_info(
                EMBEDDING_NAME, TensorProto.FLOAT, ["batch", EMBEDDING_DIM]
            ),
        ],
        initializer=initializers,
    )
    model = helper.make_model(
        graph,
        producer_name="modstream.training.placeholder",
        producer_version=str(MODEL_VERSION),
        opset_imports=[helper.make_opsetid("", OPSET)],
        doc_string="PLACEHOLDER colour heuristic, not a moderation model. Classes: "
        + ",".join(CLASS_NAMES),
    )
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model, full_check=True)
    return model


def model_config_text() -> str:
    """Return the Triton ``config.pbtxt`` for the placeholder."""
    parameters = {
        "modstream.class_names": ",".join(CLASS_NAMES),
        "modstream.input_size": str(INPUT_SIZE),
        "modstream.resize": "stretch_bilinear",
        "modstream.placeholder": "true",
    }
    parameter_lines = "".join(
        f'parameters {{ key: "{key}" value: {{ string_value: "{value}" }} }}\n'
        for key, value in parameters.items()
    )
    # No instance_group: Triton then picks one instance per GPU where there are GPUs and one on
    # CPU elsewhere, so the same file serves in NVIDIA's GPU image and on a CPU-only machine.
    # No preferred_batch_size: for onnxruntime Triton's docs advise against it; the scheduler
    # already forms the largest batch available within the queue delay.
    return (
        "# PLACEHOLDER colour heuristic, not a moderation model.\n"
        "# Generated by `python -m training.placeholder`; edit that module, not this file.\n"
        f'name: "{MODEL_NAME}"\n'
        'backend: "onnxruntime"\n'
        f"max_batch_size: {MAX_BATCH_SIZE}\n"
        "version_policy: { latest: { num_versions: 1 } }\n"
        "input [\n"
        "  {\n"
        f'    name: "{INPUT_NAME}"\n'
        "    data_type: TYPE_UINT8\n"
        "    format: FORMAT_NHWC\n"
        f"    dims: [ {INPUT_SIZE}, {INPUT_SIZE}, 3 ]\n"
        "  }\n"
        "]\n"
        "output [\n"
        "  {\n"
        f'    name: "{PROBS_NAME}"\n'
        "    data_type: TYPE_FP32\n"
        f"    dims: [ {len(CLASS_NAMES)} ]\n"
        '    label_filename: "labels.txt"\n'
        "  },\n"
        "  {\n"
        f'    name: "{EMBEDDING_NAME}"\n'
        "    data_type: TYPE_FP32\n"
        f"    dims: [ {EMBEDDING_DIM} ]\n"
        "  }\n"
        "]\n"
        "dynamic_batching {\n"
        "  max_queue_delay_microseconds: 2000\n"
        "}\n"
        f"{parameter_lines}"
    )


def parity_images() -> UInt8Array:
    """Return a fixed batch covering solid colours, a red-to-grey blend and random noise."""
    rng = np.random.default_rng(20240601)
    solids = [solid_image(rgb) for rgb, _ in SOLID_COLOURS.values()]
    blend = np.linspace([255, 0, 0], [128, 128, 128], INPUT_SIZE).round().astype(np.uint8)
    gradient = np.broadcast_to(blend[:, None, :], (INPUT_SIZE, INPUT_SIZE, 3))
    noise = rng.integers(0, 256, size=(3, INPUT_SIZE, INPUT_SIZE, 3), dtype=np.uint8)
    return np.concatenate([np.stack([*solids, gradient]), noise])


def check_parity(model_path: Path, images: UInt8Array | None = None) -> float:
    """Run ``model_path`` with onnxruntime and compare it with :func:`reference_forward`.

    Returns the largest absolute difference seen. Raises ParityError above PARITY_TOLERANCE.
    """
    batch = parity_images() if images is None else images
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(
        str(model_path), sess_options=options, providers=["CPUExecutionProvider"]
    )
    got_probs, got_embedding = session.run([PROBS_NAME, EMBEDDING_NAME], {INPUT_NAME: batch})
    want_probs, want_embedding = reference_forward(batch)
    worst = max(
        float(np.max(np.abs(np.asarray(got_probs) - want_probs))),
        float(np.max(np.abs(np.asarray(got_embedding) - want_embedding))),
    )
    if not worst <= PARITY_TOLERANCE:
        raise ParityError(
            f"{model_path} differs from reference_forward by {worst:.3g} "
            f"(tolerance {PARITY_TOLERANCE:g})"
        )
    return worst


def _write_model_dir(model_dir: Path) -> None:
    version_dir = model_dir / str(MODEL_VERSION)
    version_dir.mkdir(parents=True)
    (version_dir / "model.onnx").write_bytes(build_model().SerializeToString(deterministic=True))
    (model_dir / "config.pbtxt").write_text(model_config_text(), encoding="utf-8")
    (model_dir / "labels.txt").write_text("".join(f"{c}\n" for c in CLASS_NAMES), encoding="utf-8")


def write_model_repository(repo: Path) -> None:
    """Write ``repo/modstream_placeholder`` (config, labels, ONNX) and check its parity.

    The model directory is built and checked beside the old one and then swapped in, so a
    failure leaves the previous version untouched. Raises ParityError if the check fails.
    """
    repo.mkdir(parents=True, exist_ok=True)
    target = repo / MODEL_NAME
    # A dot-prefixed name, so that a crash at the wrong moment leaves nothing Triton would try
    # to load as a model.
    staging = Path(tempfile.mkdtemp(prefix=f".{MODEL_NAME}.new.", dir=repo))
    try:
        # mkdtemp makes the directory private; model repositories are usually read by a
        # different user inside the serving container.
        staging.chmod(0o755)
        _write_model_dir(staging)
        worst = check_parity(staging / str(MODEL_VERSION) / "model.onnx")
        _swap_in(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    logger.info("wrote %s (onnxruntime parity: max abs diff %.2g)", target, worst)


def _swap_in(staging: Path, target: Path) -> None:
    if not target.exists():
        os.rename(staging, target)
        return
    retired = Path(tempfile.mkdtemp(prefix=f".{MODEL_NAME}.old.", dir=target.parent))
    old = retired / MODEL_NAME
    os.rename(target, old)
    try:
        os.rename(staging, target)
    except BaseException:
        os.rename(old, target)
        shutil.rmtree(retired, ignore_errors=True)
        raise
    shutil.rmtree(retired)


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point: ``python -m training.placeholder --repo triton_repo``."""
    parser = argparse.ArgumentParser(
        prog="python -m training.placeholder",
        description="Write the PLACEHOLDER colour-heuristic classifier into a Triton model "
        "repository. It is a stand-in for the real model, not a moderation model.",
    )
    parser.add_argument(
        "--repo", type=Path, default=Path("triton_repo"), help="model repository directory"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    write_model_repository(args.repo)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
