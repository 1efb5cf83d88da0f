"""Triton's preprocess step without Triton: a status per image, never a failed batch; the
configs it and the bytes ensembles are written with; the consumer's check of a bytes model."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from google.protobuf import json_format
from PIL import Image

from consumer.errors import ConfigError, ModelMismatch
from consumer.imaging.decode import (
    DecodedImage,
    EncodedImage,
    ImageLimits,
    check_or_decode,
    decode_image,
)
from consumer.inference.ensemble import (
    PIXEL_MODEL_PARAMETER,
    bytes_ensemble_config,
    preprocess_config,
    read_config,
    render,
)
from consumer.inference.model_check import ModelSpec, check_bytes_model
from consumer.inference.preprocess_model import Preprocessor, padded_rows
from consumer.runtime.settings import ImagingSettings
from tests.support.paths import TRITON_REPO
from training.bytes_models import write_bytes_models

LIMITS = ImageLimits(max_bytes=10_000_000, max_pixels=50_000_000, sample_frames=1)


def jpeg(colour: tuple[int, int, int] = (10, 200, 90)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (300, 200), colour).save(buffer, format="JPEG")
    return buffer.getvalue()


def test_each_image_gets_its_own_status_and_good_ones_decode_as_in_the_consumer() -> None:
    good = jpeg()
    items = [good, good[: len(good) // 2], b"text", b""]
    prepared = Preprocessor(32, LIMITS).prepare(items)
    assert prepared.status == ["", "image_corrupt", "image_unsupported_format", "image_empty"]
    assert prepared.detail[0] == ""
    assert all(prepared.detail[1:])
    assert (prepared.images[0] == decode_image(good, 32, LIMITS).pixels).all()
    assert not prepared.images[1:].any()  # refused images are black, never half-decoded


def test_check_only_passes_good_bytes_on_and_replaces_refused_ones_with_a_placeholder() -> None:
    good = jpeg()
    check = Preprocessor(32, LIMITS, decode=False)
    prepared = check.prepare([good, b"text"])
    assert prepared.status == ["", "image_unsupported_format"]
    assert prepared.checked[0] == good
    placeholder = Image.open(io.BytesIO(prepared.checked[1]))
    assert placeholder.format == "JPEG"


def test_parameters_missing_or_bad_say_which() -> None:
    with pytest.raises(ValueError, match=r"modstream\.input_size"):
        Preprocessor.from_parameters({"modstream.input_size": "x"})
    made = Preprocessor.from_parameters(
        {
            "modstream.input_size": "224",
            "modstream.max_image_bytes": "1000",
            "modstream.max_pixels": "2000",
            "modstream.max_decode_bytes": "3000",
            "modstream.decode": "false",
        }
    )
    assert (made.size, made.decode, made.limits.max_bytes) == (224, False, 1000)


def test_the_committed_preprocess_model_is_what_the_generator_writes(tmp_path: Path) -> None:
    committed = TRITON_REPO / "preprocess"
    (tmp_path / "nsfw_mobilenet_v2").mkdir()
    backbone = read_config(TRITON_REPO / "nsfw_mobilenet_v2" / "config.pbtxt")
    (tmp_path / "nsfw_mobilenet_v2" / "config.pbtxt").write_text(render(backbone))
    assert write_bytes_models(tmp_path) == ["nsfw_mobilenet_v2_bytes"]
    for name in ("config.pbtxt", "1/model.py"):
        assert (tmp_path / "preprocess" / name).read_text() == (committed / name).read_text()
    limits = ImagingSettings()
    parameters = read_config(committed / "config.pbtxt").parameters
    assert parameters["modstream.max_pixels"].string_value == str(limits.max_pixels)


def test_the_bytes_ensemble_chains_preprocess_into_the_model() -> None:
    backbone = read_config(TRITON_REPO / "nsfw_mobilenet_v2" / "config.pbtxt")
    preprocess = preprocess_config(224, LIMITS)
    ensemble = bytes_ensemble_config(backbone, preprocess)
    first, second = ensemble.ensemble_scheduling.step
    assert (first.model_name, second.model_name) == ("preprocess", "nsfw_mobilenet_v2")
    assert second.input_map[backbone.input[0].name] == first.output_map["image"]
    outputs = [o.name for o in ensemble.output]
    assert outputs[-2:] == ["preprocess_status", "preprocess_detail"]
    assert {o.name for o in backbone.output} <= set(outputs)
    assert ensemble.parameters[PIXEL_MODEL_PARAMETER].string_value == "nsfw_mobilenet_v2"
    with pytest.raises(ConfigError, match="preprocess model for its input size"):
        bytes_ensemble_config(backbone, preprocess_config(299, LIMITS))


def _as_triton_reports(config: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """The metadata and config JSON Triton reports for a model config."""
    as_json = json_format.MessageToDict(config, preserving_proto_field_name=True)
    kinds = {"TYPE_STRING": "BYTES", "TYPE_FP32": "FP32", "TYPE_UINT8": "UINT8"}

    def tensors(key: str) -> list[dict[str, Any]]:
        return [
            {"name": t["name"], "datatype": kinds[t["data_type"]], "shape": [-1, *t["dims"]]}
            for t in as_json.get(key, [])
        ]

    metadata = {"name": config.name, "inputs": tensors("input"), "outputs": tensors("output")}
    return metadata, as_json


def test_the_consumer_checks_that_the_bytes_model_wraps_its_model() -> None:
    backbone = read_config(TRITON_REPO / "nsfw_mobilenet_v2" / "config.pbtxt")
    ensemble = bytes_ensemble_config(backbone, preprocess_config(224, LIMITS))
    metadata, config = _as_triton_reports(ensemble)
    classes = tuple(backbone.parameters["modstream.class_names"].string_value.split(","))
    spec = ModelSpec("nsfw_mobilenet_v2", "1", "image", 224, classes, 1280, 32)
    check_bytes_model(metadata, config, spec)
    other = ModelSpec("nsfw_mobilenet_v2_mid", "1", "image", 224, classes, 1792, 32)
    with pytest.raises(ModelMismatch, match="not the consumer's model"):
        check_bytes_model(metadata, config, other)
    metadata["outputs"] = [o for o in metadata["outputs"] if o["name"] != "preprocess_status"]
    with pytest.raises(ModelMismatch, match="preprocess_status"):
        check_bytes_model(metadata, config, spec)


def png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (40, 30), (1, 2, 3)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_a_check_for_a_jpeg_decoder_refuses_other_formats_with_a_placeholder() -> None:
    check = Preprocessor(32, LIMITS, decode=False, formats=frozenset({"JPEG", "MPO"}))
    prepared = check.prepare([jpeg(), png()])
    assert prepared.status == ["", "image_unsupported_format"]
    assert "PNG" in prepared.detail[1]
    assert prepared.checked[1] == check.placeholder


def test_the_consumer_decodes_what_triton_does_not_read_and_forwards_the_rest() -> None:
    jpeg_only = frozenset({"JPEG"})
    assert isinstance(check_or_decode(jpeg(), 32, LIMITS, jpeg_only), EncodedImage)
    assert isinstance(check_or_decode(png(), 32, LIMITS, jpeg_only), DecodedImage)
    assert isinstance(check_or_decode(png(), 32, LIMITS), EncodedImage)


def test_padded_rows_keep_each_image_and_pad_with_zeros() -> None:
    rows = padded_rows([b"\xff\xd8ab", b"\xff\xd8"])
    assert rows.dtype == np.uint8
    assert rows.shape == (2, 4)
    assert bytes(rows[0]) == b"\xff\xd8ab"
    assert bytes(rows[1]) == b"\xff\xd8\x00\x00"
