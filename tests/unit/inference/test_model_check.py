from __future__ import annotations

import copy
from typing import Any

import pytest

from consumer.errors import ModelMismatch
from consumer.inference.model_check import check_model

# The JSON shapes tritonclient returns (int64 fields arrive as strings).
METADATA: dict[str, Any] = {
    "name": "m",
    "versions": ["1", "3"],
    "inputs": [{"name": "image", "datatype": "UINT8", "shape": ["-1", "224", "224", "3"]}],
    "outputs": [
        {"name": "probs", "datatype": "FP32", "shape": ["-1", "5"]},
        {"name": "embedding", "datatype": "FP32", "shape": ["-1", "16"]},
    ],
}
CONFIG: dict[str, Any] = {
    "max_batch_size": 32,
    "parameters": {"modstream.class_names": {"string_value": "a,b,c,d,e"}},
}


def test_matching_model_gives_its_spec() -> None:
    spec = check_model(METADATA, CONFIG, "", 32)
    assert spec.input_size == 224
    assert spec.class_names == ("a", "b", "c", "d", "e")
    assert spec.embedding_dim == 16
    assert spec.version == "3"
    assert check_model(METADATA, CONFIG, "1", 8).version == "1"


def _broken(
    path: list[Any], value: Any, config: bool = False
) -> tuple[dict[str, Any], dict[str, Any]]:
    metadata, cfg = copy.deepcopy(METADATA), copy.deepcopy(CONFIG)
    target: Any = cfg if config else metadata
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return metadata, cfg


@pytest.mark.parametrize(
    ("path", "value", "config", "message"),
    [
        (["inputs", 0, "datatype"], "FP32", False, "expected UINT8"),
        (["inputs", 0, "shape"], ["-1", "3", "224", "224"], False, "expected [-1, S, S, 3]"),
        (["outputs", 0, "name"], "logits", False, "'probs' is missing"),
        (["outputs", 1, "datatype"], "FP16", False, "'embedding' is FP16"),
        (["parameters", "modstream.class_names", "string_value"], "a,b", True, "lists 2 classes"),
        (["parameters"], {}, True, "no parameter"),
        (["max_batch_size"], 8, True, "max_batch_size is 8"),
    ],
)
def test_mismatches_are_refused_with_a_reason(
    path: list[Any], value: Any, config: bool, message: str
) -> None:
    metadata, cfg = _broken(path, value, config)
    with pytest.raises(ModelMismatch) as info:
        check_model(metadata, cfg, "", 32)
    assert message in str(info.value)


def _with_prototypes(shape: list[str], categories: str) -> tuple[dict[str, Any], dict[str, Any]]:
    metadata, config = copy.deepcopy(METADATA), copy.deepcopy(CONFIG)
    metadata["outputs"].append({"name": "prototype_similarity", "datatype": "FP32", "shape": shape})
    config["parameters"]["modstream.prototype_categories"] = {"string_value": categories}
    return metadata, config


def test_prototype_output_is_optional_and_names_its_categories() -> None:
    assert check_model(METADATA, CONFIG, "", 32).prototype_categories == ()
    spec = check_model(*_with_prototypes(["-1", "5"], "a,c"), "", 32)
    assert spec.prototype_categories == ("a", "c")


@pytest.mark.parametrize(
    ("shape", "categories", "message"),
    [
        (["-1", "4"], "a", "expected FP32 [-1, 5]"),
        (["-1", "5"], "a,zebra", "unknown classes ['zebra']"),
    ],
)
def test_bad_prototype_outputs_are_refused(shape: list[str], categories: str, message: str) -> None:
    with pytest.raises(ModelMismatch, match=message.replace("[", r"\[").replace("]", r"\]")):
        check_model(*_with_prototypes(shape, categories), "", 32)


def test_prototype_categories_without_the_output_are_refused() -> None:
    config = copy.deepcopy(CONFIG)
    config["parameters"]["modstream.prototype_categories"] = {"string_value": "a"}
    with pytest.raises(ModelMismatch, match="'prototype_similarity' is missing"):
        check_model(METADATA, config, "", 32)
