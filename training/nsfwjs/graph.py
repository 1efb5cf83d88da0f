"""Build a PyTorch module from a TensorFlow graph-model (``modelTopology.node``) as tfjs stores it.

Supports exactly the ops of nsfwjs' ``mobilenet_v2_mid`` (a TF-Hub MobileNetV2 with batch norm
folded into its convolutions): Placeholder, Const, Identity, Mul, Sub, AddV2, _FusedConv2D,
FusedDepthwiseConv2dNative, AvgPool, Squeeze, _FusedMatMul and Softmax. Constants are the
manifest tensors of the same name. Anything else is refused by op name.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from training.nsfwjs import ops
from training.nsfwjs.errors import ImportFailed
from training.nsfwjs.graph_nodes import (
    Node,
    attr_bool,
    attr_ints,
    attr_str,
    attr_strs,
    check_nhwc,
    nhwc_pair,
    node_order,
    parse_nodes,
    placeholder_shape,
)
from training.nsfwjs.jsliteral import JsObject
from training.nsfwjs.ops import Shape
from training.nsfwjs.tfjs import WeightArray

logger = logging.getLogger(__name__)

_ACTIVATIONS = {"Relu": "relu", "Relu6": "relu6"}
# TensorFlow (batch, H, W, C) axis -> channels-first dimension.
_NHWC_TO_NCHW = {0: 0, 1: 2, 2: 3, 3: 1}


@dataclass(frozen=True)
class _Const:
    array: WeightArray


@dataclass(frozen=True)
class _Dynamic:
    slot: int
    shape: Shape


_Value = _Const | _Dynamic


@dataclass(frozen=True)
class _Built:
    module: nn.Module
    inputs: tuple[_Dynamic, ...]
    shape: Shape


_Builder = Callable[[Node, list[_Value]], _Built]


def _image(node: Node, value: _Value) -> tuple[_Dynamic, tuple[int, int, int]]:
    if not isinstance(value, _Dynamic) or len(value.shape) != 3:
        raise ImportFailed(f"{node.where}: expected a computed (H, W, C) image input")
    h, w, c = value.shape
    return value, (h, w, c)


def _const(node: Node, value: _Value, what: str) -> WeightArray:
    if not isinstance(value, _Const):
        raise ImportFailed(f"{node.where}: the {what} must be a constant")
    return value.array


def _pads(
    node: Node,
    hw: tuple[int, int],
    kernel: tuple[int, int],
    stride: tuple[int, int],
    dilation: tuple[int, int] = (1, 1),
) -> ops.Pads:
    padding = attr_str(node, "padding", "VALID")
    if padding == "EXPLICIT":
        explicit = attr_ints(node, "explicit_paddings", ())
        if len(explicit) != 8 or any(explicit[i] for i in (0, 1, 6, 7)):
            raise ImportFailed(f"{node.where}: explicit_paddings {list(explicit)} are not NHWC")
        return (explicit[2], explicit[3], explicit[4], explicit[5])
    if padding not in ("SAME", "VALID"):
        raise ImportFailed(f"{node.where}: padding {padding!r} is not SAME, VALID or EXPLICIT")
    return ops.window_pads(padding.lower(), hw, kernel, stride, dilation)


def _fused(node: Node, args: list[_Value], channels: int) -> tuple[Tensor | None, str]:
    """Bias and activation of a fused op: fused_ops [] / [BiasAdd] / [BiasAdd, Relu(6)]."""
    fused = attr_strs(node, "fused_ops")
    extra = args[2:]
    if not fused:
        if extra:
            raise ImportFailed(f"{node.where}: extra inputs without fused_ops")
        return None, "linear"
    if (
        fused[0] != "BiasAdd"
        or len(fused) > 2
        or (len(fused) == 2 and fused[1] not in _ACTIVATIONS)
    ):
        raise ImportFailed(
            f"{node.where}: fused_ops {fused} are not supported (BiasAdd, then Relu or Relu6)"
        )
    if len(extra) != 1:
        raise ImportFailed(f"{node.where}: BiasAdd needs exactly one bias input")
    bias = _const(node, extra[0], "bias")
    if bias.shape != (channels,):
        raise ImportFailed(
            f"{node.where}: bias has shape {list(bias.shape)}, but the op needs [{channels}]"
        )
    activation = _ACTIVATIONS[fused[1]] if len(fused) == 2 else "linear"
    return torch.from_numpy(np.asarray(bias, dtype=np.float32)), activation


def _conv(node: Node, args: list[_Value]) -> _Built:
    check_nhwc(node)
    if len(args) < 2:
        raise ImportFailed(f"{node.where}: expected input and filter")
    x, (h, w, c) = _image(node, args[0])
    kernel_tf = _const(node, args[1], "filter")
    depthwise = node.op == "FusedDepthwiseConv2dNative"
    if kernel_tf.ndim != 4 or kernel_tf.shape[2] != c:
        raise ImportFailed(
            f"{node.where}: filter shape {list(kernel_tf.shape)} does not fit {c} input channels"
        )
    kh, kw, _, m = kernel_tf.shape
    k = torch.from_numpy(np.asarray(kernel_tf, dtype=np.float32))
    if depthwise:
        filters, groups = c * m, c
        weight = k.permute(2, 3, 0, 1).reshape(filters, 1, kh, kw)
    else:
        filters, groups = m, 1
        weight = k.permute(3, 2, 0, 1)
    stride = nhwc_pair(node, "strides", 1)
    dilation = nhwc_pair(node, "dilations", 1)
    pads = _pads(node, (h, w), (kh, kw), stride, dilation)
    bias, activation = _fused(node, args, filters)
    out = ops.window_output((h, w), (kh, kw), stride, pads, dilation)
    module = ops.Conv2d(
        weight,
        bias,
        stride=stride,
        dilation=dilation,
        groups=groups,
        pads=pads,
        activation=activation,
    )
    return _Built(module, (x,), (*out, filters))


def _avg_pool(node: Node, args: list[_Value]) -> _Built:
    check_nhwc(node)
    x, (h, w, c) = _image(node, args[0])
    kernel = nhwc_pair(node, "ksize", 1)
    stride = nhwc_pair(node, "strides", 1)
    pads = _pads(node, (h, w), kernel, stride)
    out = ops.window_output((h, w), kernel, stride, pads)
    module = ops.Pool2d("avg", kernel=kernel, stride=stride, pads=pads, hw=(h, w))
    return _Built(module, (x,), (*out, c))


class _Squeeze(nn.Module):
    def __init__(self, dims: tuple[int, ...]) -> None:
        super().__init__()
        self.dims = dims

    def forward(self, x: Tensor) -> Tensor:
        # One dimension at a time, highest first: the ONNX exporter cannot take a tuple.
        for dim in sorted((d % x.dim() for d in self.dims), reverse=True):
            x = torch.squeeze(x, dim)
        return x


def _squeeze(node: Node, args: list[_Value]) -> _Built:
    x, (h, w, c) = _image(node, args[0])
    dims = attr_ints(node, "squeeze_dims", ()) or attr_ints(node, "axis", ())
    dims = tuple(d % 4 for d in dims) or tuple(i for i, n in ((1, h), (2, w), (3, c)) if n == 1)
    shape = {1: h, 2: w, 3: c}
    if sorted(dims) != [1, 2] or h != 1 or w != 1:
        raise ImportFailed(
            f"{node.where}: only squeezing a 1x1 spatial map is supported "
            f"(dims {list(dims)} of shape {[shape[i] for i in (1, 2, 3)]})"
        )
    return _Built(_Squeeze(tuple(_NHWC_TO_NCHW[d] for d in dims)), (x,), (c,))


def _matmul(node: Node, args: list[_Value]) -> _Built:
    if len(args) < 2 or not isinstance(args[0], _Dynamic) or len(args[0].shape) != 1:
        raise ImportFailed(f"{node.where}: expected a computed [batch, D] first input")
    if attr_bool(node, "transpose_a"):
        raise ImportFailed(f"{node.where}: transpose_a is not supported")
    kernel = _const(node, args[1], "second input")
    if attr_bool(node, "transpose_b"):
        kernel = kernel.T
    d = args[0].shape[0]
    if kernel.ndim != 2 or kernel.shape[0] != d:
        raise ImportFailed(
            f"{node.where}: weight shape {list(kernel.shape)} does not fit input size {d}"
        )
    units = kernel.shape[1]
    bias, activation = _fused(node, args, units)
    weight = torch.from_numpy(np.ascontiguousarray(kernel.T, dtype=np.float32))
    return _Built(ops.Dense(weight, bias, activation), (args[0],), (units,))


def _softmax(node: Node, args: list[_Value]) -> _Built:
    x = args[0]
    if not isinstance(x, _Dynamic):
        raise ImportFailed(f"{node.where}: softmax of a constant is not supported")
    return _Built(ops.Activation("softmax"), (x,), x.shape)


class _Binary(nn.Module):
    """``a <op> b`` where one side may be a constant folded into the module."""

    constant: Tensor | None

    def __init__(self, op: str, constant: Tensor | None, constant_first: bool) -> None:
        super().__init__()
        self.op = op
        self.register_buffer("constant", constant)
        self.constant_first = constant_first

    def forward(self, *xs: Tensor) -> Tensor:
        if self.constant is None:
            a, b = xs
        elif self.constant_first:
            a, b = self.constant, xs[0]
        else:
            a, b = xs[0], self.constant
        if self.op == "Mul":
            return a * b
        if self.op == "Sub":
            return a - b
        return a + b


def _binary(node: Node, args: list[_Value]) -> _Built:
    if len(args) != 2:
        raise ImportFailed(f"{node.where}: expected two inputs")
    a, b = args
    if isinstance(a, _Dynamic) and isinstance(b, _Dynamic):
        if a.shape != b.shape:
            raise ImportFailed(f"{node.where}: input shapes {a.shape} and {b.shape} differ")
        return _Built(_Binary(node.op, None, False), (a, b), a.shape)
    if isinstance(a, _Const) and isinstance(b, _Const):
        raise ImportFailed(f"{node.where}: an op on two constants is not supported")
    dynamic, constant = (a, b) if isinstance(a, _Dynamic) else (b, a)
    if not isinstance(dynamic, _Dynamic) or not isinstance(constant, _Const):
        raise ImportFailed(f"{node.where}: unexpected inputs")
    array = np.asarray(constant.array, dtype=np.float32)
    channels = dynamic.shape[-1]
    if array.ndim == 0:
        tensor = torch.tensor(float(array))
    elif array.shape == (channels,):
        tensor = torch.from_numpy(array.copy())
        if len(dynamic.shape) == 3:
            tensor = tensor.reshape(channels, 1, 1)
    else:
        raise ImportFailed(
            f"{node.where}: constant of shape {list(array.shape)} is neither a scalar nor "
            f"per-channel [{channels}]"
        )
    module = _Binary(node.op, tensor, constant_first=isinstance(a, _Const))
    return _Built(module, (dynamic,), dynamic.shape)


_BUILDERS: dict[str, _Builder] = {
    "_FusedConv2D": _conv,
    "FusedDepthwiseConv2dNative": _conv,
    "AvgPool": _avg_pool,
    "Squeeze": _squeeze,
    "_FusedMatMul": _matmul,
    "Softmax": _softmax,
    "Mul": _binary,
    "Sub": _binary,
    "AddV2": _binary,
}
SUPPORTED_OPS = ("Placeholder", "Const", "Identity", *_BUILDERS)


def build_graph_model(
    topology: JsObject,
    weights: Mapping[str, WeightArray],
    *,
    outputs: Sequence[str],
    source: str,
) -> ops.Dag:
    """Return a module mapping an NHWC batch to the values of the named nodes, in order.

    Raises ImportFailed for unsupported ops or attributes, and for missing, unused or
    misshapen constants.
    """
    nodes = parse_nodes(topology, source)
    for name in outputs:
        if name not in nodes:
            raise ImportFailed(f"{source}: requested output node {name!r} does not exist")
    values: dict[str, _Value] = {}
    modules: list[nn.Module] = []
    sources: list[list[int]] = []
    used: set[str] = set()
    placeholders = 0
    declared: Shape = ()
    for name in node_order(nodes, outputs, source):
        node = nodes[name]
        args = [values[i] for i in node.inputs]
        if node.op == "Const":
            if name not in weights:
                raise ImportFailed(f"{node.where}: no tensor of this name in the manifest")
            used.add(name)
            values[name] = _Const(weights[name])
            continue
        if node.op == "Identity":
            if len(args) != 1:
                raise ImportFailed(f"{node.where}: expected one input")
            values[name] = args[0]
            continue
        if node.op == "Placeholder":
            placeholders += 1
            if placeholders > 1:
                raise ImportFailed(f"{node.where}: only one input placeholder is supported")
            declared = placeholder_shape(node)
            built = _Built(ops.ToChannelsFirst(), (), declared)
            srcs = [0]
        else:
            builder = _BUILDERS.get(node.op)
            if builder is None:
                raise ImportFailed(
                    f"{node.where}: op {node.op!r} is not supported "
                    f"(supported: {', '.join(SUPPORTED_OPS)})"
                )
            try:
                built = builder(node, args)
            except ValueError as exc:
                raise ImportFailed(f"{node.where}: {exc}") from exc
            srcs = [v.slot for v in built.inputs]
        values[name] = _Dynamic(1 + len(modules), built.shape)
        modules.append(built.module)
        sources.append(srcs)
    unused = sorted(set(weights) - used)
    if unused:
        raise ImportFailed(
            f"{source}: {len(unused)} weight(s) feed no requested output, first {unused[0]!r}"
        )
    slots = []
    for name in outputs:
        value = values[name]
        if not isinstance(value, _Dynamic):
            raise ImportFailed(f"{source}: output node {name!r} is a constant")
        slots.append(value.slot)
    logger.debug("%s: built %d graph ops", source, len(modules))
    return ops.Dag(modules, sources, slots, num_inputs=1, input_shape=declared)
