"""Reading nsfwjs' TensorFlow.js bundles: the JS literal parser, dequantization, and refusals.

Failure modes run against small synthetic tarballs built here, so no network is needed.
"""

from __future__ import annotations

import base64
import io
import math
import tarfile
from pathlib import Path

import numpy as np
import pytest

from training.nsfwjs import load
from training.nsfwjs.archive import TARBALL_SHA256, NsfwjsArchive
from training.nsfwjs.errors import ImportFailed
from training.nsfwjs.jsliteral import JsValue, bundle_export, parse_js_literal
from training.nsfwjs.tfjs import (
    Quantization,
    WeightGroup,
    WeightSpec,
    decode_shard,
    parse_model_json,
    read_weights,
)

# The browserify prelude nsfwjs' bundles start and end with; parameter names vary per file.
_PRELUDE = (
    '!function(e){if("object"==typeof exports&&"undefined"!=typeof module)module.exports=e();'
    'else if("function"==typeof define&&define.amd)define([],e);else{("undefined"!=typeof '
    'window?window:"undefined"!=typeof global?global:"undefined"!=typeof self?self:this).'
    "model=e()}}(function(){return function e(a,n,i){function l(_,o){if(!n[_]){if(!a[_])"
    '{var s="function"==typeof require&&require;if(!o&&s)return s(_,!0);throw new Error()}'
    "var r=n[_]={exports:{}};a[_][0].call(r.exports,function(e){return l(a[_][1][e]||e)},r,"
    "r.exports,e,a,n,i)}return n[_].exports}for(var t=0;t<i.length;t++)l(i[t]);return l}"
)


def to_js(value: JsValue) -> str:
    """Render a value the way the minifier does: bare keys, !0/!1, no leading zero."""
    if value is True:
        return "!0"
    if value is False:
        return "!1"
    if value is None:
        return "null"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, int | float):
        text = repr(value)
        if text.startswith("0."):
            return text[1:]
        if text.startswith("-0."):
            return "-" + text[2:]
        return text
    if isinstance(value, list):
        return "[" + ",".join(to_js(v) for v in value) + "]"
    return "{" + ",".join(f"{k}:{to_js(v)}" for k, v in value.items()) + "}"


def bundle(value: JsValue, params: str = "t,o,r") -> str:
    module, exports = params.split(",")[1], "exports"
    body = f"{{1:[function({params}){{{module}.{exports}={to_js(value)}}},{{}}]}},{{}},[1])(1)}});"
    return f"{_PRELUDE}({body}"


# --- the JS literal parser -------------------------------------------------------------------


def test_minified_object_literal() -> None:
    text = (
        '{a:1,b:!0,c:!1,d:.03,e:-.5,f:1e-3,g:-2E+2,h:"x\\"y",i:[1,[2,[]],{}],'
        '"quoted-key":null,$k_1:void 0,7:"seven",l:true,m:false}'
    )
    assert parse_js_literal(text) == {
        "a": 1,
        "b": True,
        "c": False,
        "d": 0.03,
        "e": -0.5,
        "f": 0.001,
        "g": -200.0,
        "h": 'x"y',
        "i": [1, [2, []], {}],
        "quoted-key": None,
        "$k_1": None,
        "7": "seven",
        "l": True,
        "m": False,
    }


def test_integers_stay_integers_and_other_numbers_are_floats() -> None:
    values = parse_js_literal("[224,-3,0,5.,1e3,0x1F,.5e1]")
    assert values == [224, -3, 0, 5.0, 1000.0, 31, 5.0]
    assert isinstance(values, list)
    assert [type(v) for v in values] == [int, int, int, float, float, int, float]


def test_string_escapes_and_quotes() -> None:
    text = r"""["a\nb", "\u00e9\x41\t", 'single "quotes" \'too\'', "\ud83d\ude00", "\u{1F600}"]"""
    assert parse_js_literal(text) == ["a\nb", "éA\t", "single \"quotes\" 'too'", "😀", "😀"]


def test_whitespace_between_tokens_is_allowed() -> None:
    assert parse_js_literal(' { a : [ 1 , !0 ] ,\n b : "c" } ') == {"a": [1, True], "b": "c"}


def test_special_numbers() -> None:
    values = parse_js_literal("[Infinity,NaN]")
    assert isinstance(values, list)
    assert values[0] == math.inf
    assert isinstance(values[1], float)
    assert math.isnan(values[1])


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("{a:foo}", "identifier 'foo' is not a literal"),
        ("{a:1", "unexpected end of input"),
        ("{a:1}x", "trailing characters"),
        ("{a:f()}", "identifier 'f' is not a literal"),
        ("{a 1}", "expected ':'"),
        ("[1 2]", "expected ',' or ']'"),
        ('"open', "unexpected character"),
        ("{a:1;}", "unexpected character"),
        ("{a:1 b:2}", "expected ',' or '}'"),
    ],
)
def test_malformed_literals_are_refused_with_the_offset(text: str, reason: str) -> None:
    with pytest.raises(ImportFailed, match="at offset") as caught:
        parse_js_literal(text, source="snippet.js")
    message = str(caught.value)
    assert reason in message
    assert message.startswith("snippet.js: ")
    assert "\n" not in message


def test_bundle_export_finds_the_module_whatever_the_parameter_names() -> None:
    value: JsValue = {"format": "graph-model", "x": [1, 2.5, True]}
    for params in ("e,a,n", "h,Z,S", "$,_,r"):
        assert bundle_export(bundle(value, params), source="model.min.js") == value


def test_bundle_export_refuses_other_files() -> None:
    with pytest.raises(ImportFailed, match=r"^notes\.js: no browserify module 1"):
        bundle_export("module.exports = {a: 1};", source="notes.js")
    trailing = bundle({"a": 1}).replace("}},{}]", "};alert(1)},{}]")
    with pytest.raises(ImportFailed, match="followed by more code"):
        bundle_export(trailing, source="model.min.js")


def test_decode_shard_returns_the_raw_bytes() -> None:
    raw = bytes(range(256)) * 3
    text = bundle(base64.b64encode(raw).decode("ascii"))
    assert decode_shard(text, source="group1-shard1of1.min.js") == raw
    with pytest.raises(ImportFailed, match="not valid base64"):
        decode_shard(bundle("not base64!"), source="group1-shard1of1.min.js")


# --- dequantization --------------------------------------------------------------------------


def _spec(name: str, shape: tuple[int, ...], scale: float, minimum: float) -> WeightSpec:
    return WeightSpec(name, shape, "float32", Quantization("uint8", scale, minimum))


def test_dequantization_is_q_times_scale_plus_min_rounded_once_to_float32() -> None:
    scale, minimum = 0.006666756611244351, -0.87334511607301
    codes = np.arange(256, dtype=np.uint8)
    group = WeightGroup(("s",), (_spec("w", (16, 16), scale, minimum),))
    out = read_weights([group], {"s": codes.tobytes()}, source="m")["w"]
    expected = np.array([np.float32(float(q) * scale + minimum) for q in range(256)])
    assert out.dtype == np.float32
    assert out.shape == (16, 16)
    np.testing.assert_array_equal(out.ravel(), expected)
    assert out.ravel()[0] == np.float32(minimum)  # forgetting `min` would give 0 here


def test_tensors_sit_back_to_back_across_shards_in_paths_order() -> None:
    group = WeightGroup(
        ("part1", "part2"),
        (_spec("a", (3,), 1.0, 0.0), _spec("b", (2, 2), 0.5, -1.0), _spec("c", (), 2.0, 10.0)),
    )
    shards = {"part2": bytes([3, 4, 5, 6]), "part1": bytes([0, 1, 2, 255])}
    out = read_weights([group], shards, source="m")
    np.testing.assert_array_equal(out["a"], [0.0, 1.0, 2.0])
    np.testing.assert_array_equal(out["b"], [[126.5, 0.5], [1.0, 1.5]])
    assert out["c"].shape == ()
    assert float(out["c"]) == 22.0


def test_int32_and_raw_tensors() -> None:
    int_spec = WeightSpec("i", (3,), "int32", Quantization("uint8", 1.0, -2.5))
    raw_spec = WeightSpec("f", (2,), "float32", None)
    raw = bytes([0, 1, 5]) + np.array([1.25, -3.0], dtype="<f4").tobytes()
    out = read_weights([WeightGroup(("s",), (int_spec, raw_spec))], {"s": raw}, source="m")
    # JavaScript's Math.round: halves go up, so -2.5 -> -2 and -1.5 -> -1.
    np.testing.assert_array_equal(out["i"], [-2, -1, 3])
    assert out["i"].dtype == np.int32
    np.testing.assert_array_equal(out["f"], [1.25, -3.0])


def test_minified_integers_in_exponent_form_are_accepted_as_shapes() -> None:
    manifest = parse_js_literal(
        '{modelTopology:{},weightsManifest:[{paths:["p"],weights:[{name:"w",shape:[1e3,2],'
        'dtype:"float32",quantization:{min:-1,scale:.5,dtype:"uint8"}}]}]}'
    )
    spec = parse_model_json(manifest, source="model.min.js").groups[0].weights[0]
    assert spec.shape == (1000, 2)
    assert spec.quantization == Quantization("uint8", 0.5, -1.0)


def test_manifest_structure_is_checked() -> None:
    with pytest.raises(ImportFailed, match=r"weights\[0\] \('w'\)\.shape: expected an array"):
        parse_model_json(
            {
                "modelTopology": {},
                "weightsManifest": [
                    {"paths": ["p"], "weights": [{"name": "w", "shape": "3", "dtype": "float32"}]}
                ],
            },
            source="model.min.js",
        )


# --- synthetic archives and their refusals ---------------------------------------------------

_TINY_WEIGHTS = [
    ("conv/kernel", [1, 1, 3, 2]),
    ("conv/bias", [2]),
    ("dense_3/kernel", [32, 5]),
    ("dense_3/bias", [5]),
]


def _tiny_model_json(
    weights: list[tuple[str, list[int]]], paths: list[str], quant_dtype: str = "uint8"
) -> JsValue:
    def layer(name: str, cls: str, config: JsValue, inbound: list[str]) -> JsValue:
        return {
            "name": name,
            "class_name": cls,
            "config": config,
            "inbound_nodes": [[[i, 0, 0, {}] for i in inbound]] if inbound else [],
        }

    layers = [
        layer("input_1", "InputLayer", {"batch_input_shape": [None, 4, 4, 3]}, []),
        layer(
            "conv",
            "Conv2D",
            {
                "filters": 2,
                "kernel_size": [1, 1],
                "strides": [1, 1],
                "padding": "same",
                "data_format": "channels_last",
                "dilation_rate": [1, 1],
                "activation": "relu",
                "use_bias": True,
            },
            ["input_1"],
        ),
        layer("flatten_1", "Flatten", {"data_format": "channels_last"}, ["conv"]),
        layer(
            "dense_3",
            "Dense",
            {"units": 5, "activation": "softmax", "use_bias": True},
            ["flatten_1"],
        ),
    ]
    return {
        "modelTopology": {
            "keras_version": "2.2.4",
            "model_config": {
                "class_name": "Model",
                "config": {
                    "name": "tiny",
                    "layers": layers,
                    "input_layers": [["input_1", 0, 0]],
                    "output_layers": [["dense_3", 0, 0]],
                },
            },
        },
        "weightsManifest": [
            {
                "paths": [p for p in paths],
                "weights": [
                    {
                        "name": name,
                        "shape": [d for d in shape],
                        "dtype": "float32",
                        "quantization": {"min": -0.5, "scale": 0.004, "dtype": quant_dtype},
                    }
                    for name, shape in weights
                ],
            }
        ],
    }


def _tarball(path: Path, files: dict[str, str]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(f"package/dist/models/mobilenet_v2/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def _archive(
    tmp_path: Path,
    *,
    weights: list[tuple[str, list[int]]] = _TINY_WEIGHTS,
    shard_bytes: int | None = None,
    drop: str | None = None,
    quant_dtype: str = "uint8",
) -> NsfwjsArchive:
    total = sum(math.prod(shape) for _, shape in weights)
    data = bytes(i % 251 for i in range(total if shard_bytes is None else shard_bytes))
    half = len(data) // 2
    shards = {"group1-shard1of2": data[:half], "group1-shard2of2": data[half:]}
    files = {"model.min.js": bundle(_tiny_model_json(weights, list(shards), quant_dtype))}
    for name, part in shards.items():
        files[f"{name}.min.js"] = bundle(base64.b64encode(part).decode("ascii"), "n,i,s")
    if drop is not None:
        del files[drop]
    path = _tarball(tmp_path / "nsfwjs-4.4.0.tgz", files)
    return NsfwjsArchive.open(path, trust_unpinned=True)


def _one_line(exc: pytest.ExceptionInfo[ImportFailed]) -> str:
    message = str(exc.value)
    assert "\n" not in message
    return message


def test_synthetic_archive_imports(tmp_path: Path) -> None:
    # The registry's input-size check is what stops this tiny model, so every step before it
    # (tarball, bundles, manifest, dequantization, layers) went through.
    with pytest.raises(ImportFailed, match=r"declares input \[4, 4, 3\].*expects \[224, 224, 3\]"):
        load("mobilenet_v2", archive=_archive(tmp_path))


def test_wrong_sha256_is_refused_naming_the_file(tmp_path: Path) -> None:
    path = _tarball(tmp_path / "nsfwjs-4.4.0.tgz", {"model.min.js": bundle({})})
    with pytest.raises(ImportFailed) as caught:
        NsfwjsArchive.open(path)
    message = _one_line(caught)
    assert str(path) in message
    assert TARBALL_SHA256 in message
    assert "delete it and fetch it again" in message


def test_missing_tarball_says_how_to_get_it(tmp_path: Path) -> None:
    with pytest.raises(ImportFailed, match="fetch_tarball") as caught:
        NsfwjsArchive.open(tmp_path / "absent.tgz")
    _one_line(caught)


def test_missing_shard_is_named(tmp_path: Path) -> None:
    archive = _archive(tmp_path, drop="group1-shard2of2.min.js")
    with pytest.raises(ImportFailed, match="'group1-shard2of2' is missing") as caught:
        load("mobilenet_v2", archive=archive)
    _one_line(caught)


def test_truncated_weights_name_the_tensor(tmp_path: Path) -> None:
    archive = _archive(tmp_path, shard_bytes=20)
    with pytest.raises(ImportFailed, match="truncated at tensor 'dense_3/kernel'") as caught:
        load("mobilenet_v2", archive=archive)
    _one_line(caught)


def test_shape_mismatch_names_the_weight(tmp_path: Path) -> None:
    weights = [("conv/kernel", [1, 1, 3, 4]), *_TINY_WEIGHTS[1:]]
    archive = _archive(tmp_path, weights=weights)
    with pytest.raises(ImportFailed) as caught:
        load("mobilenet_v2", archive=archive)
    message = _one_line(caught)
    assert "weight 'conv/kernel' has shape [1, 1, 3, 4], but the layer needs [1, 1, 3, 2]" in (
        message
    )


def test_unknown_dtype_names_the_tensor(tmp_path: Path) -> None:
    archive = _archive(tmp_path, quant_dtype="float16")
    with pytest.raises(ImportFailed, match="'conv/kernel' has unsupported storage dtype") as caught:
        load("mobilenet_v2", archive=archive)
    _one_line(caught)


def test_not_a_tarball(tmp_path: Path) -> None:
    path = tmp_path / "nsfwjs-4.4.0.tgz"
    path.write_bytes(b"not gzip")
    archive = NsfwjsArchive.open(path, trust_unpinned=True)
    with pytest.raises(ImportFailed, match="not a readable gzip tarball") as caught:
        archive.model_files("mobilenet_v2")
    _one_line(caught)


def test_unknown_model_name_lists_the_known_ones() -> None:
    with pytest.raises(ImportFailed, match="choose one of mobilenet_v2, mobilenet_v2_mid"):
        load("resnet50")
