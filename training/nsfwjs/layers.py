"""Build a PyTorch module from a Keras layers-model topology as TensorFlow.js stores it.

Reads ``modelTopology.model_config`` (a functional ``Model`` with ``inbound_nodes``) and the
dequantized weights keyed ``<layer>/<weight>``. Only the layer classes that the nsfwjs
networks use are supported; anything else is refused by name. Every weight of the manifest
must be consumed with exactly the shape the layer expects.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from training.nsfwjs import ops
from training.nsfwjs.errors import ImportFailed
from training.nsfwjs.jsliteral import JsObject, JsValue
from training.nsfwjs.keras_topology import Layer, layer_order, parse_topology
from training.nsfwjs.ops import Shape
from training.nsfwjs.tfjs import (
    WeightArray,
    expect_int,
    expect_ints,
    expect_list,
    expect_number,
    expect_str,
)

logger = logging.getLogger(__name__)


class _Weights:
    """Hands out weights by name, checking shapes and remembering which were used."""

    def __init__(self, tensors: Mapping[str, WeightArray], source: str) -> None:
        self.tensors = tensors
        self.source = source
        self.used: set[str] = set()

    def take(self, name: str, shape: Shape) -> torch.Tensor:
        if name not in self.tensors:
            raise ImportFailed(f"{self.source}: weight {name!r} is missing from the manifest")
        array = self.tensors[name]
        if tuple(array.shape) != shape:
            raise ImportFailed(
                f"{self.source}: weight {name!r} has shape {list(array.shape)}, but the layer "
                f"needs {list(shape)}"
            )
        self.used.add(name)
        return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))

    def check_all_used(self) -> None:
        unused = sorted(set(self.tensors) - self.used)
        if unused:
            raise ImportFailed(
                f"{self.source}: {len(unused)} weight(s) belong to no layer, first {unused[0]!r}"
            )


_Builder = Callable[[Layer, list[Shape], _Weights, str], tuple[nn.Module, Shape]]


def _where(source: str, layer: Layer) -> str:
    return f"{source}: layer {layer.name!r} ({layer.class_name})"


def _pair(value: JsValue, where: str) -> tuple[int, int]:
    if isinstance(value, int) and not isinstance(value, bool):
        return (value, value)
    pair = expect_ints(value, where)
    if len(pair) != 2:
        raise ImportFailed(f"{where}: expected two integers, found {list(pair)}")
    return pair[0], pair[1]


def _image_shape(shapes: list[Shape], where: str) -> tuple[int, int, int]:
    if len(shapes) != 1 or len(shapes[0]) != 3:
        raise ImportFailed(f"{where}: expected one (H, W, C) input, found {shapes}")
    h, w, c = shapes[0]
    return h, w, c


def _channels_last(layer: Layer, where: str) -> None:
    fmt = layer.config.get("data_format", "channels_last")
    if fmt != "channels_last":
        raise ImportFailed(f"{where}: data_format {fmt!r} is not supported (channels_last only)")


def _activation(layer: Layer, where: str) -> str:
    kind = expect_str(layer.config.get("activation", "linear"), f"{where}: activation")
    if kind not in ops.ACTIVATIONS:
        raise ImportFailed(f"{where}: activation {kind!r} is not supported ({ops.ACTIVATIONS})")
    return kind


def _padding(layer: Layer, where: str) -> str:
    padding = expect_str(layer.config.get("padding"), f"{where}: padding")
    if padding not in ("same", "valid"):
        raise ImportFailed(f"{where}: padding {padding!r} is not 'same' or 'valid'")
    return padding


def _conv(
    layer: Layer, shapes: list[Shape], weights: _Weights, where: str
) -> tuple[nn.Module, Shape]:
    _channels_last(layer, where)
    h, w, c = _image_shape(shapes, where)
    cfg = layer.config
    kernel = _pair(cfg.get("kernel_size"), f"{where}: kernel_size")
    stride = _pair(cfg.get("strides", 1), f"{where}: strides")
    dilation = _pair(cfg.get("dilation_rate", 1), f"{where}: dilation_rate")
    if cfg.get("groups", 1) != 1:
        raise ImportFailed(f"{where}: grouped convolution is not supported")
    depthwise = layer.class_name == "DepthwiseConv2D"
    if depthwise:
        multiplier = expect_int(cfg.get("depth_multiplier", 1), f"{where}: depth_multiplier")
        kernel_tf = weights.take(f"{layer.name}/depthwise_kernel", (*kernel, c, multiplier))
        filters, groups = c * multiplier, c
        # [kh, kw, C, m] -> [C*m, 1, kh, kw]; output channel c*m + j, as TensorFlow orders it.
        weight = kernel_tf.permute(2, 3, 0, 1).reshape(filters, 1, *kernel)
    else:
        filters = expect_int(cfg.get("filters"), f"{where}: filters")
        kernel_tf = weights.take(f"{layer.name}/kernel", (*kernel, c, filters))
        weight, groups = kernel_tf.permute(3, 2, 0, 1), 1
    bias = None
    if cfg.get("use_bias", True):
        bias = weights.take(f"{layer.name}/bias", (filters,))
    pads = ops.window_pads(_padding(layer, where), (h, w), kernel, stride, dilation)
    out_h, out_w = ops.window_output((h, w), kernel, stride, pads, dilation)
    module = ops.Conv2d(
        weight,
        bias,
        stride=stride,
        dilation=dilation,
        groups=groups,
        pads=pads,
        activation=_activation(layer, where),
    )
    return module, (out_h, out_w, filters)


def _batch_norm(
    layer: Layer, shapes: list[Shape], weights: _Weights, where: str
) -> tuple[nn.Module, Shape]:
    cfg = layer.config
    if len(shapes) != 1:
        raise ImportFailed(f"{where}: expected one input, found {len(shapes)}")
    shape = shapes[0]
    axis = cfg.get("axis", -1)
    if isinstance(axis, list) and len(axis) == 1:
        axis = axis[0]
    if expect_int(axis, f"{where}: axis") not in (-1, len(shape)):
        raise ImportFailed(f"{where}: normalization over axis {axis} is not supported (only -1)")
    c = shape[-1]
    name = layer.name
    mean = weights.take(f"{name}/moving_mean", (c,))
    variance = weights.take(f"{name}/moving_variance", (c,))
    gamma = weights.take(f"{name}/gamma", (c,)) if cfg.get("scale", True) else torch.ones(c)
    beta = weights.take(f"{name}/beta", (c,)) if cfg.get("center", True) else torch.zeros(c)
    eps = expect_number(cfg.get("epsilon", 1e-3), f"{where}: epsilon")
    return ops.BatchNorm(mean, variance, gamma, beta, eps), shape


def _relu(
    layer: Layer, shapes: list[Shape], weights: _Weights, where: str
) -> tuple[nn.Module, Shape]:
    cfg = layer.config
    for key in ("negative_slope", "threshold"):
        if cfg.get(key) not in (None, 0, 0.0):
            raise ImportFailed(f"{where}: ReLU with {key}={cfg.get(key)} is not supported")
    max_value = cfg.get("max_value")
    limit = None if max_value is None else expect_number(max_value, f"{where}: max_value")
    return ops.Activation("relu", limit), shapes[0]


def _activation_layer(
    layer: Layer, shapes: list[Shape], weights: _Weights, where: str
) -> tuple[nn.Module, Shape]:
    return ops.Activation(_activation(layer, where)), shapes[0]


def _zero_padding(
    layer: Layer, shapes: list[Shape], weights: _Weights, where: str
) -> tuple[nn.Module, Shape]:
    _channels_last(layer, where)
    h, w, c = _image_shape(shapes, where)
    raw = layer.config.get("padding", 1)
    if isinstance(raw, list) and all(isinstance(p, list) for p in raw):
        (top, bottom), (left, right) = (_pair(p, f"{where}: padding") for p in raw)
    else:
        (top, left) = _pair(raw, f"{where}: padding")
        bottom, right = top, left
    pads = (top, bottom, left, right)
    return ops.ZeroPad(pads), (h + top + bottom, w + left + right, c)


def _pooling(
    layer: Layer, shapes: list[Shape], weights: _Weights, where: str
) -> tuple[nn.Module, Shape]:
    _channels_last(layer, where)
    h, w, c = _image_shape(shapes, where)
    cfg = layer.config
    kernel = _pair(cfg.get("pool_size", 2), f"{where}: pool_size")
    strides = cfg.get("strides")
    stride = kernel if strides is None else _pair(strides, f"{where}: strides")
    pads = ops.window_pads(_padding(layer, where), (h, w), kernel, stride)
    out = ops.window_output((h, w), kernel, stride, pads)
    kind = "max" if layer.class_name == "MaxPooling2D" else "avg"
    module = ops.Pool2d(kind, kernel=kernel, stride=stride, pads=pads, hw=(h, w))
    return module, (*out, c)


def _flatten(
    layer: Layer, shapes: list[Shape], weights: _Weights, where: str
) -> tuple[nn.Module, Shape]:
    _channels_last(layer, where)
    size = 1
    for d in shapes[0]:
        size *= d
    return ops.FlattenChannelsLast(), (size,)


def _dense(
    layer: Layer, shapes: list[Shape], weights: _Weights, where: str
) -> tuple[nn.Module, Shape]:
    if len(shapes) != 1 or len(shapes[0]) != 1:
        raise ImportFailed(f"{where}: expected one flat input, found {shapes}")
    units = expect_int(layer.config.get("units"), f"{where}: units")
    kernel = weights.take(f"{layer.name}/kernel", (shapes[0][0], units))
    bias = None
    if layer.config.get("use_bias", True):
        bias = weights.take(f"{layer.name}/bias", (units,))
    return ops.Dense(kernel.t(), bias, _activation(layer, where)), (units,)


def _dropout(
    layer: Layer, shapes: list[Shape], weights: _Weights, where: str
) -> tuple[nn.Module, Shape]:
    return ops.Identity(), shapes[0]


def _add(
    layer: Layer, shapes: list[Shape], weights: _Weights, where: str
) -> tuple[nn.Module, Shape]:
    if len(shapes) < 2 or any(s != shapes[0] for s in shapes):
        raise ImportFailed(f"{where}: inputs must be two or more of one shape, found {shapes}")
    return ops.Add(), shapes[0]


def _concatenate(
    layer: Layer, shapes: list[Shape], weights: _Weights, where: str
) -> tuple[nn.Module, Shape]:
    rank = len(shapes[0])
    axis = expect_int(layer.config.get("axis", -1), f"{where}: axis") % (rank + 1)
    if axis == 0 or any(len(s) != rank for s in shapes):
        raise ImportFailed(f"{where}: cannot concatenate {shapes} on axis {axis}")
    others = {tuple(d for i, d in enumerate(s) if i != axis - 1) for s in shapes}
    if len(others) != 1:
        raise ImportFailed(f"{where}: inputs {shapes} differ outside axis {axis}")
    # TensorFlow's (batch, H, W, C) axis -> channels-first dimension.
    dim = {1: 2, 2: 3, 3: 1}[axis] if rank == 3 else axis
    out = list(shapes[0])
    out[axis - 1] = sum(s[axis - 1] for s in shapes)
    return ops.Concat(dim), tuple(out)


_BUILDERS: dict[str, _Builder] = {
    "Conv2D": _conv,
    "DepthwiseConv2D": _conv,
    "BatchNormalization": _batch_norm,
    "ReLU": _relu,
    "Activation": _activation_layer,
    "ZeroPadding2D": _zero_padding,
    "MaxPooling2D": _pooling,
    "AveragePooling2D": _pooling,
    "Flatten": _flatten,
    "Dense": _dense,
    "Dropout": _dropout,
    "Add": _add,
    "Concatenate": _concatenate,
}
SUPPORTED_LAYERS = ("InputLayer", *_BUILDERS)


def build_layers_model(
    topology: JsObject,
    weights: Mapping[str, WeightArray],
    *,
    outputs: Sequence[str],
    source: str,
) -> ops.Dag:
    """Return a module mapping an NHWC batch to the outputs of the named layers, in order.

    The input size is the one the InputLayer declares. Raises ImportFailed for unsupported
    layers or configurations, and for missing, unused or misshapen weights.
    """
    layers, inputs, model_outputs = parse_topology(topology, source)
    if len(inputs) != 1:
        raise ImportFailed(f"{source}: {len(inputs)} input layers; exactly one is supported")
    for name in outputs:
        if name not in layers:
            raise ImportFailed(f"{source}: requested output layer {name!r} does not exist")
    order = layer_order(layers, [*model_outputs, *outputs], source)
    declared: Shape = ()
    store = _Weights(weights, source)
    slots: dict[str, int] = {}
    shapes: dict[str, Shape] = {}
    nodes: list[nn.Module] = []
    sources: list[list[int]] = []
    for name in order:
        layer = layers[name]
        where = _where(source, layer)
        if layer.class_name == "InputLayer":
            if name != inputs[0]:
                raise ImportFailed(f"{where}: only the model's declared input may be an input")
            shape = expect_list(layer.config.get("batch_input_shape"), f"{where}: shape")
            hwc = tuple(expect_int(d, f"{where}: batch_input_shape") for d in shape[1:])
            if len(hwc) != 3:
                raise ImportFailed(f"{where}: input shape {shape} is not [batch, H, W, C]")
            module: nn.Module = ops.ToChannelsFirst()
            out_shape: Shape = hwc
            declared = hwc
            srcs = [0]
        else:
            builder = _BUILDERS.get(layer.class_name)
            if builder is None:
                raise ImportFailed(
                    f"{where}: layer class {layer.class_name!r} is not supported "
                    f"(supported: {', '.join(SUPPORTED_LAYERS)})"
                )
            if not layer.inbound:
                raise ImportFailed(f"{where}: the layer has no inputs")
            in_shapes = [shapes[i] for i in layer.inbound]
            try:
                module, out_shape = builder(layer, in_shapes, store, where)
            except ValueError as exc:
                raise ImportFailed(f"{where}: {exc}") from exc
            srcs = [slots[i] for i in layer.inbound]
        slots[name] = 1 + len(nodes)
        shapes[name] = out_shape
        nodes.append(module)
        sources.append(srcs)
    store.check_all_used()
    logger.debug("%s: built %d layers", source, len(nodes))
    return ops.Dag(
        nodes, sources, [slots[name] for name in outputs], num_inputs=1, input_shape=declared
    )
