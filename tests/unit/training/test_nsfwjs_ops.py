"""TensorFlow semantics of the imported layers, checked against direct NumPy loops.

The loops index the unpadded input the way TensorFlow defines ``SAME``/``VALID`` windows, so
they share no padding code with the modules under test.
"""

from __future__ import annotations

import base64
import math
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
import torch

from training.nsfwjs import ops
from training.nsfwjs.archive import fetch_tarball
from training.nsfwjs.errors import ImportFailed
from training.nsfwjs.graph import build_graph_model
from training.nsfwjs.jsliteral import JsObject, JsValue
from training.nsfwjs.layers import build_layers_model
from training.nsfwjs.tfjs import WeightArray

Array = npt.NDArray[Any]
RNG = np.random.default_rng(7)


def _window_start(size: int, kernel: int, stride: int, padding: str) -> tuple[int, int]:
    """(output size, offset of the first window) as TensorFlow defines them."""
    if padding == "VALID":
        return (size - kernel) // stride + 1, 0
    out = math.ceil(size / stride)
    return out, max((out - 1) * stride + kernel - size, 0) // 2


def tf_conv(x: Array, k: Array, stride: int, padding: str, *, depthwise: bool) -> Array:
    """NHWC-free reference: x [H, W, C], k [kh, kw, C, M]."""
    h, w, c = x.shape
    kh, kw, _, m = k.shape
    oh, top = _window_start(h, kh, stride, padding)
    ow, left = _window_start(w, kw, stride, padding)
    out = np.zeros((oh, ow, c * m if depthwise else m))
    for i in range(oh):
        for j in range(ow):
            for di in range(kh):
                for dj in range(kw):
                    y, z = i * stride + di - top, j * stride + dj - left
                    if 0 <= y < h and 0 <= z < w:
                        if depthwise:
                            out[i, j] += (x[y, z][:, None] * k[di, dj]).reshape(-1)
                        else:
                            out[i, j] += x[y, z] @ k[di, dj]
    return out


def tf_avg_pool(x: Array, kernel: int, stride: int, padding: str) -> Array:
    h, w, c = x.shape
    oh, top = _window_start(h, kernel, stride, padding)
    ow, left = _window_start(w, kernel, stride, padding)
    out = np.zeros((oh, ow, c))
    for i in range(oh):
        for j in range(ow):
            y0, z0 = i * stride - top, j * stride - left
            window = x[max(y0, 0) : y0 + kernel, max(z0, 0) : z0 + kernel]
            out[i, j] = window.reshape(-1, c).mean(axis=0)  # real pixels only, as TF does
    return out


@pytest.mark.parametrize(
    ("size", "kernel", "stride", "expected"),
    [(224, 3, 2, (0, 1)), (299, 3, 1, (1, 1)), (7, 1, 1, (0, 0)), (8, 3, 2, (0, 1)),
     (17, 7, 1, (3, 3)), (35, 5, 1, (2, 2)), (5, 4, 1, (1, 2))],
)  # fmt: skip
def test_same_padding_puts_the_odd_pixel_after(
    size: int, kernel: int, stride: int, expected: tuple[int, int]
) -> None:
    assert ops.same_pads(size, kernel, stride) == expected


def _conv_layer(name: str, cls: str, config: JsObject, inbound: str) -> JsValue:
    return {
        "name": name,
        "class_name": cls,
        "config": {"data_format": "channels_last", "dilation_rate": [1, 1], **config},
        "inbound_nodes": [[[inbound, 0, 0, {}]]],
    }


def _layers_topology(size: int, channels: int, layers: list[JsValue], out: str) -> JsObject:
    first: JsValue = {
        "name": "input_1",
        "class_name": "InputLayer",
        "config": {"batch_input_shape": [None, size, size, channels]},
        "inbound_nodes": [],
    }
    return {
        "model_config": {
            "class_name": "Model",
            "config": {
                "layers": [first, *layers],
                "input_layers": [["input_1", 0, 0]],
                "output_layers": [[out, 0, 0]],
            },
        }
    }


@pytest.mark.parametrize("padding", ["same", "valid"])
@pytest.mark.parametrize("stride", [1, 2])
def test_conv_and_depthwise_conv_match_tensorflow_windows(padding: str, stride: int) -> None:
    size, c = 9, 3
    x = RNG.normal(size=(size, size, c))
    kernel = RNG.normal(size=(3, 3, c, 4))
    depthwise = RNG.normal(size=(3, 3, 4, 2))
    bias = RNG.normal(size=(4,))
    cfg: JsObject = {"kernel_size": [3, 3], "strides": [stride, stride], "padding": padding}
    layers = [
        _conv_layer("conv", "Conv2D", {**cfg, "filters": 4, "activation": "linear"}, "input_1"),
        _conv_layer(
            "dw",
            "DepthwiseConv2D",
            {**cfg, "depth_multiplier": 2, "use_bias": False, "activation": "linear"},
            "conv",
        ),
    ]
    weights: dict[str, WeightArray] = {
        "conv/kernel": kernel.astype(np.float32),
        "conv/bias": bias.astype(np.float32),
        "dw/depthwise_kernel": depthwise.astype(np.float32),
    }
    net = build_layers_model(
        _layers_topology(size, c, layers, "dw"), weights, outputs=["conv", "dw"], source="t"
    )
    with torch.no_grad():
        conv_out, dw_out = net(torch.from_numpy(x[None].astype(np.float32)))
    pad = padding.upper()
    expected_conv = tf_conv(x, kernel, stride, pad, depthwise=False) + bias
    expected_dw = tf_conv(expected_conv, depthwise, stride, pad, depthwise=True)
    np.testing.assert_allclose(conv_out[0].permute(1, 2, 0).numpy(), expected_conv, atol=1e-4)
    np.testing.assert_allclose(dw_out[0].permute(1, 2, 0).numpy(), expected_dw, atol=1e-4)


@pytest.mark.parametrize(
    ("size", "kernel", "stride", "padding"),
    [(5, 3, 1, "SAME"), (6, 3, 2, "SAME"), (7, 2, 2, "SAME"), (8, 8, 8, "VALID"),
     (7, 3, 2, "VALID")],
)  # fmt: skip
def test_average_pooling_excludes_padding_like_tensorflow(
    size: int, kernel: int, stride: int, padding: str
) -> None:
    x = RNG.normal(size=(size, size, 2))
    pads = ops.window_pads(padding.lower(), (size, size), (kernel, kernel), (stride, stride))
    pool = ops.Pool2d(
        "avg", kernel=(kernel, kernel), stride=(stride, stride), pads=pads, hw=(size, size)
    )
    nchw = torch.from_numpy(x.astype(np.float32)).permute(2, 0, 1)[None]
    out = pool(nchw)[0].permute(1, 2, 0).numpy()
    np.testing.assert_allclose(out, tf_avg_pool(x, kernel, stride, padding), atol=1e-6)


def test_max_pooling_same_pads_with_minus_infinity() -> None:
    x = -1.0 - torch.rand(1, 1, 4, 4)  # all negative: zero padding would win the max
    pads = ops.window_pads("same", (4, 4), (3, 3), (2, 2))
    pool = ops.Pool2d("max", kernel=(3, 3), stride=(2, 2), pads=pads, hw=(4, 4))
    out = pool(x)
    assert out.shape == (1, 1, 2, 2)
    assert float(out.max()) < -1.0
    assert float(out[0, 0, 1, 1]) == float(x[0, 0, 2:, 2:].max())


def test_concatenate_flatten_and_batch_norm_follow_channels_last() -> None:
    x = RNG.normal(size=(2, 2, 3)).astype(np.float32)
    stats = {
        "bn/gamma": RNG.uniform(0.5, 2, 3),
        "bn/beta": RNG.normal(size=3),
        "bn/moving_mean": RNG.normal(size=3),
        "bn/moving_variance": RNG.uniform(0.0, 0.01, 3),
    }
    layers: list[JsValue] = [
        {
            "name": "bn",
            "class_name": "BatchNormalization",
            "config": {"axis": -1, "epsilon": 0.001, "center": True, "scale": True},
            "inbound_nodes": [[["input_1", 0, 0, {}]]],
        },
        {
            "name": "cat",
            "class_name": "Concatenate",
            "config": {"axis": -1},
            "inbound_nodes": [[["input_1", 0, 0, {}], ["bn", 0, 0, {}]]],
        },
        {
            "name": "flat",
            "class_name": "Flatten",
            "config": {},
            "inbound_nodes": [[["cat", 0, 0, {}]]],
        },
    ]
    weights: dict[str, WeightArray] = {k: v.astype(np.float32) for k, v in stats.items()}
    net = build_layers_model(
        _layers_topology(2, 3, layers, "flat"), weights, outputs=["flat"], source="t"
    )
    (flat,) = net(torch.from_numpy(x[None]))
    bn = (x - stats["bn/moving_mean"]) / np.sqrt(stats["bn/moving_variance"] + 1e-3)
    bn = bn * stats["bn/gamma"] + stats["bn/beta"]
    expected = np.concatenate([x, bn], axis=-1).reshape(-1)  # (H, W, C) order
    np.testing.assert_allclose(flat[0].detach().numpy(), expected, rtol=1e-5, atol=1e-5)


def test_unsupported_layer_is_refused_by_name() -> None:
    layers: list[JsValue] = [
        {
            "name": "lstm",
            "class_name": "LSTM",
            "config": {},
            "inbound_nodes": [[["input_1", 0, 0, {}]]],
        }
    ]
    with pytest.raises(ImportFailed, match=r"layer 'lstm' .*class 'LSTM' is not supported"):
        build_layers_model(_layers_topology(4, 3, layers, "lstm"), {}, outputs=[], source="t")


def test_unused_weights_are_refused() -> None:
    weights: dict[str, WeightArray] = {"ghost/kernel": np.zeros(1, dtype=np.float32)}
    with pytest.raises(ImportFailed, match="belong to no layer, first 'ghost/kernel'"):
        build_layers_model(_layers_topology(4, 3, [], "input_1"), weights, outputs=[], source="t")


# --- graph models ----------------------------------------------------------------------------


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _s(text: str) -> JsValue:
    return {"s": _b64(text)}


def _ints(*values: int) -> JsValue:
    return {"list": {"i": [str(v) for v in values]}}


def _node(name: str, op: str, inputs: list[str], **attr: JsValue) -> JsValue:
    return {"name": name, "op": op, "input": [*inputs], "attr": attr}


def _tiny_graph() -> tuple[JsObject, dict[str, WeightArray]]:
    conv_attrs: dict[str, JsValue] = {
        "strides": _ints(1, 2, 2, 1),
        "dilations": _ints(1, 1, 1, 1),
        "padding": _s("SAME"),
        "data_format": _s("NHWC"),
        "fused_ops": {"list": {"s": [_b64("BiasAdd"), _b64("Relu6")]}},
        "num_args": {"i": "1"},
    }
    nodes = [
        _node(
            "input",
            "Placeholder",
            [],
            shape={"shape": {"dim": [{"size": "-1"}, {"size": "6"}, {"size": "6"}, {"size": "3"}]}},
        ),
        _node("mul/y", "Const", []),
        _node("sub/y", "Const", []),
        _node("mul", "Mul", ["mul/y", "input"]),
        _node("sub", "Sub", ["mul", "sub/y"]),
        _node("conv/w", "Const", []),
        _node("conv/b", "Const", []),
        _node("conv", "_FusedConv2D", ["sub", "conv/w", "conv/b"], **conv_attrs),
        _node("dw/w", "Const", []),
        _node("dw/b", "Const", []),
        _node("dw", "FusedDepthwiseConv2dNative", ["conv", "dw/w", "dw/b", "^conv"], **conv_attrs),
        _node("res", "AddV2", ["dw", "dw"]),
        _node("pool", "AvgPool", ["res"], ksize=_ints(1, 2, 2, 1), strides=_ints(1, 1, 1, 1),
              padding=_s("VALID"), data_format=_s("NHWC")),
        _node("squeeze", "Squeeze", ["pool"], squeeze_dims=_ints(1, 2)),
        _node("fc/w", "Const", []),
        _node("fc/b", "Const", []),
        _node("fc", "_FusedMatMul", ["squeeze", "fc/w", "fc/b"],
              fused_ops={"list": {"s": [_b64("BiasAdd")]}},
              transpose_a={"b": False}, transpose_b={"b": False}),
        _node("softmax", "Softmax", ["fc"]),
        _node("Identity", "Identity", ["softmax:0"]),
    ]  # fmt: skip
    weights = {
        "mul/y": np.array(2.0),
        "sub/y": np.array(1.0),
        "conv/w": RNG.normal(size=(3, 3, 3, 4)),
        "conv/b": RNG.normal(size=4),
        "dw/w": RNG.normal(size=(3, 3, 4, 1)),
        "dw/b": RNG.normal(size=4),
        "fc/w": RNG.normal(size=(4, 5)),
        "fc/b": RNG.normal(size=5),
    }
    return {"node": nodes}, {k: v.astype(np.float32) for k, v in weights.items()}


def test_graph_model_ops_match_tensorflow() -> None:
    topology, w = _tiny_graph()
    net = build_graph_model(topology, w, outputs=["Identity", "squeeze"], source="g")
    x = RNG.uniform(size=(6, 6, 3))
    with torch.no_grad():
        probs, embedding = net(torch.from_numpy(x[None].astype(np.float32)))
    h = x * 2.0 - 1.0
    h = np.clip(tf_conv(h, w["conv/w"], 2, "SAME", depthwise=False) + w["conv/b"], 0, 6)
    h = np.clip(tf_conv(h, w["dw/w"], 2, "SAME", depthwise=True) + w["dw/b"], 0, 6)
    h = tf_avg_pool(h + h, 2, 1, "VALID").reshape(-1)
    logits = h @ w["fc/w"] + w["fc/b"]
    expected = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    np.testing.assert_allclose(embedding[0].numpy(), h, atol=1e-5)
    np.testing.assert_allclose(probs[0].numpy(), expected, atol=1e-6)


def test_unsupported_op_is_refused_by_name() -> None:
    topology, w = _tiny_graph()
    nodes = topology["node"]
    assert isinstance(nodes, list)
    nodes.append(_node("odd", "Erf", ["softmax"]))
    with pytest.raises(ImportFailed, match=r"node 'odd' \(Erf\): op 'Erf' is not supported"):
        build_graph_model(topology, w, outputs=["odd"], source="g")


# --- fetching ----------------------------------------------------------------------------------


def test_missing_npm_says_what_to_install(tmp_path: Path) -> None:
    with pytest.raises(ImportFailed, match=r"not found on PATH: install Node\.js with npm"):
        fetch_tarball(tmp_path, npm="no-such-npm-here")


def test_npm_serving_a_different_tarball_is_refused(tmp_path: Path) -> None:
    fake = tmp_path / "npm"
    fake.write_text('#!/bin/sh\necho tampered > "$4/nsfwjs-4.4.0.tgz"\necho nsfwjs-4.4.0.tgz\n')
    fake.chmod(0o755)
    cache = tmp_path / "cache"
    with pytest.raises(ImportFailed, match="not the pinned") as caught:
        fetch_tarball(cache, npm=str(fake))
    assert "\n" not in str(caught.value)
    assert not (cache / "nsfwjs-4.4.0.tgz").exists()


def test_failing_npm_is_reported(tmp_path: Path) -> None:
    fake = tmp_path / "npm"
    fake.write_text("#!/bin/sh\necho 'npm error code E404' >&2\nexit 1\n")
    fake.chmod(0o755)
    with pytest.raises(ImportFailed, match=r"failed \(exit 1\): npm error code E404"):
        fetch_tarball(tmp_path / "cache", npm=str(fake))
