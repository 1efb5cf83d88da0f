"""PyTorch modules with TensorFlow semantics, shared by the layers-model and graph-model import.

Tensors inside the imported networks are channels-first (NCHW); :class:`ToChannelsFirst` is
the only place NHWC input is permuted. Shapes passed around at build time are TensorFlow's
per-example shapes: ``(H, W, C)`` for images and ``(D,)`` for vectors.

TensorFlow's ``SAME`` padding puts the odd pixel after the input (right/bottom), and its
average pooling divides by the number of real (unpadded) pixels in each window; both are
reproduced here. A padding that cannot be expressed as PyTorch's symmetric ``padding=`` is
applied with an explicit ``F.pad`` first.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TypeAlias

import torch
import torch.nn.functional as F  # noqa: N812
from torch import Tensor, nn

from training.nsfwjs.errors import ImportFailed

Shape: TypeAlias = tuple[int, ...]
Pads: TypeAlias = tuple[int, int, int, int]  # top, bottom, left, right

ACTIVATIONS = ("linear", "relu", "relu6", "softmax", "sigmoid", "tanh")


def activate(x: Tensor, kind: str) -> Tensor:
    """Apply a TensorFlow activation by name; softmax runs over channels (axis -1 in TF)."""
    if kind == "linear":
        return x
    if kind == "relu":
        return F.relu(x)
    if kind == "relu6":
        return F.hardtanh(x, 0.0, 6.0)
    if kind == "softmax":
        return torch.softmax(x, dim=1)
    if kind == "sigmoid":
        return torch.sigmoid(x)
    if kind == "tanh":
        return torch.tanh(x)
    raise ValueError(f"unknown activation {kind!r}; expected one of {ACTIVATIONS}")


def same_pads(size: int, kernel: int, stride: int, dilation: int = 1) -> tuple[int, int]:
    """TensorFlow ``SAME`` padding (before, after) for one spatial dimension."""
    out = -(-size // stride)
    total = max((out - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2


def window_pads(
    padding: str,
    hw: tuple[int, int],
    kernel: tuple[int, int],
    stride: tuple[int, int],
    dilation: tuple[int, int] = (1, 1),
) -> Pads:
    """Pads (top, bottom, left, right) for TensorFlow ``SAME`` or ``VALID`` windows."""
    if padding == "valid":
        return (0, 0, 0, 0)
    if padding != "same":
        raise ValueError(f"padding must be 'same' or 'valid', not {padding!r}")
    top, bottom = same_pads(hw[0], kernel[0], stride[0], dilation[0])
    left, right = same_pads(hw[1], kernel[1], stride[1], dilation[1])
    return (top, bottom, left, right)


def window_output(
    hw: tuple[int, int],
    kernel: tuple[int, int],
    stride: tuple[int, int],
    pads: Pads,
    dilation: tuple[int, int] = (1, 1),
) -> tuple[int, int]:
    """Spatial output size of a convolution or pooling window over a padded input."""
    h = hw[0] + pads[0] + pads[1] - (kernel[0] - 1) * dilation[0] - 1
    w = hw[1] + pads[2] + pads[3] - (kernel[1] - 1) * dilation[1] - 1
    if h < 0 or w < 0:
        raise ValueError(f"window {kernel} does not fit the input {hw} padded by {pads}")
    return h // stride[0] + 1, w // stride[1] + 1


def _symmetric(pads: Pads) -> tuple[int, int] | None:
    top, bottom, left, right = pads
    return (top, left) if top == bottom and left == right else None


class ToChannelsFirst(nn.Module):
    """NHWC input to the NCHW layout used inside the network."""

    def forward(self, x: Tensor) -> Tensor:
        return x.permute(0, 3, 1, 2)


class Conv2d(nn.Module):
    """Convolution (plain, or depthwise with ``groups``) + optional bias + activation."""

    def __init__(
        self,
        weight: Tensor,
        bias: Tensor | None,
        *,
        stride: tuple[int, int],
        dilation: tuple[int, int],
        groups: int,
        pads: Pads,
        activation: str,
    ) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight.contiguous())
        self.bias = None if bias is None else nn.Parameter(bias.contiguous())
        self.stride = stride
        self.dilation = dilation
        self.groups = groups
        self.pads = pads
        self.activation = activation

    def forward(self, x: Tensor) -> Tensor:
        padding = _symmetric(self.pads)
        if padding is None:
            top, bottom, left, right = self.pads
            x = F.pad(x, (left, right, top, bottom))
            padding = (0, 0)
        y = F.conv2d(x, self.weight, self.bias, self.stride, padding, self.dilation, self.groups)
        return activate(y, self.activation)


class Pool2d(nn.Module):
    """Max or average pooling with TensorFlow padding semantics."""

    counts: Tensor | None

    def __init__(
        self,
        kind: str,
        *,
        kernel: tuple[int, int],
        stride: tuple[int, int],
        pads: Pads,
        hw: tuple[int, int],
    ) -> None:
        super().__init__()
        if kind not in ("max", "avg"):
            raise ValueError(f"pooling kind must be 'max' or 'avg', not {kind!r}")
        self.kind = kind
        self.kernel = kernel
        self.stride = stride
        self.pads = pads
        symmetric = _symmetric(pads)
        fits = symmetric is not None and all(
            2 * p <= k for p, k in zip(symmetric, kernel, strict=True)
        )
        self.padding: tuple[int, int] | None = symmetric if fits else None
        # Real pixels per window, for average pooling over an explicitly padded input.
        counts = None
        if kind == "avg" and self.padding is None and any(pads):
            top, bottom, left, right = pads
            ones = F.pad(torch.ones(1, 1, *hw), (left, right, top, bottom))
            counts = F.avg_pool2d(ones, kernel, stride, divisor_override=1)
        self.register_buffer("counts", counts)

    def forward(self, x: Tensor) -> Tensor:
        if self.padding is not None:
            if self.kind == "max":
                return F.max_pool2d(x, self.kernel, self.stride, self.padding)
            return F.avg_pool2d(x, self.kernel, self.stride, self.padding, count_include_pad=False)
        top, bottom, left, right = self.pads
        if self.kind == "max":
            x = F.pad(x, (left, right, top, bottom), value=-math.inf)
            return F.max_pool2d(x, self.kernel, self.stride)
        if self.counts is None:
            return F.avg_pool2d(x, self.kernel, self.stride)
        x = F.pad(x, (left, right, top, bottom))
        return F.avg_pool2d(x, self.kernel, self.stride, divisor_override=1) / self.counts


class BatchNorm(nn.Module):
    """Inference-time batch normalization over channels (dim 1) with TensorFlow's epsilon."""

    mean: Tensor
    variance: Tensor

    def __init__(
        self, mean: Tensor, variance: Tensor, gamma: Tensor, beta: Tensor, eps: float
    ) -> None:
        super().__init__()
        self.register_buffer("mean", mean.contiguous())
        self.register_buffer("variance", variance.contiguous())
        self.weight = nn.Parameter(gamma.contiguous())
        self.bias = nn.Parameter(beta.contiguous())
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        return F.batch_norm(
            x, self.mean, self.variance, self.weight, self.bias, training=False, eps=self.eps
        )


class Dense(nn.Module):
    """``x @ kernel + bias`` then an activation; ``weight`` is PyTorch's [out, in]."""

    def __init__(self, weight: Tensor, bias: Tensor | None, activation: str) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight.contiguous())
        self.bias = None if bias is None else nn.Parameter(bias.contiguous())
        self.activation = activation

    def forward(self, x: Tensor) -> Tensor:
        return activate(F.linear(x, self.weight, self.bias), self.activation)


class Activation(nn.Module):
    """A standalone activation, or ReLU clipped at ``max_value``."""

    def __init__(self, kind: str, max_value: float | None = None) -> None:
        super().__init__()
        self.kind = kind
        self.max_value = max_value

    def forward(self, x: Tensor) -> Tensor:
        if self.max_value is not None:
            return F.hardtanh(x, 0.0, self.max_value)
        return activate(x, self.kind)


class ZeroPad(nn.Module):
    """Explicit zero padding (top, bottom, left, right)."""

    def __init__(self, pads: Pads) -> None:
        super().__init__()
        self.pads = pads

    def forward(self, x: Tensor) -> Tensor:
        top, bottom, left, right = self.pads
        return F.pad(x, (left, right, top, bottom))


class Add(nn.Module):
    """Elementwise sum of all inputs, left to right."""

    def forward(self, *xs: Tensor) -> Tensor:
        out = xs[0]
        for x in xs[1:]:
            out = out + x
        return out


class Concat(nn.Module):
    """Concatenation along a channels-first dimension."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim

    def forward(self, *xs: Tensor) -> Tensor:
        return torch.cat(xs, dim=self.dim)


class FlattenChannelsLast(nn.Module):
    """Flatten in TensorFlow's (H, W, C) order."""

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() == 4:
            x = x.permute(0, 2, 3, 1)
        return x.flatten(1)


class Identity(nn.Module):
    """Pass the (single) input through; stands in for Dropout at inference."""

    def forward(self, x: Tensor) -> Tensor:
        return x


class Dag(nn.Module):
    """Runs modules in topological order; each node reads values produced earlier.

    ``input_shape`` is the per-example shape the network was built for. Value slots
    ``0 .. num_inputs-1`` hold the graph inputs and slot ``num_inputs + i`` the
    output of node ``i``. Values are dropped after their last reader to bound memory.
    """

    def __init__(
        self,
        nodes: Sequence[nn.Module],
        sources: Sequence[Sequence[int]],
        outputs: Sequence[int],
        *,
        num_inputs: int,
        input_shape: Shape,
    ) -> None:
        super().__init__()
        self.input_shape = input_shape
        self.nodes = nn.ModuleList(nodes)
        self.sources = [list(s) for s in sources]
        self.outputs = list(outputs)
        self.num_inputs = num_inputs
        last_use = {slot: -1 for slot in range(num_inputs + len(nodes))}
        for i, srcs in enumerate(self.sources):
            for slot in srcs:
                last_use[slot] = i
        self.release: list[list[int]] = [[] for _ in nodes]
        for slot, i in last_use.items():
            if i >= 0 and slot not in self.outputs:
                self.release[i].append(slot)

    def forward(self, *inputs: Tensor) -> list[Tensor]:
        values: list[Tensor | None] = [*inputs, *([None] * len(self.nodes))]
        for i, node in enumerate(self.nodes):
            args = [values[slot] for slot in self.sources[i]]
            values[self.num_inputs + i] = node(*args)
            for slot in self.release[i]:
                values[slot] = None
        result = []
        for slot in self.outputs:
            value = values[slot]
            if value is None:
                raise RuntimeError(f"output slot {slot} was released before the end")
            result.append(value)
        return result


def topological_order(
    inputs_of: Mapping[str, Sequence[str]], roots: Sequence[str], source: str, kind: str
) -> list[str]:
    """Names in dependency order (inputs first), reachable from ``roots``; iterative DFS.

    Raises ImportFailed for a name that is referenced but not defined, or a cycle.
    """
    order: list[str] = []
    state: dict[str, int] = {}  # 1 = on the stack, 2 = done
    for root in roots:
        stack: list[tuple[str, int]] = [(root, 0)]
        while stack:
            name, next_input = stack.pop()
            if name not in inputs_of:
                raise ImportFailed(f"{source}: {kind} {name!r} is referenced but not defined")
            if next_input == 0:
                if state.get(name) == 2:
                    continue
                if state.get(name) == 1:
                    raise ImportFailed(f"{source}: {kind} {name!r} is part of a cycle")
                state[name] = 1
            inputs = inputs_of[name]
            if next_input < len(inputs):
                stack.append((name, next_input + 1))
                if state.get(inputs[next_input]) != 2:
                    stack.append((inputs[next_input], 0))
                continue
            state[name] = 2
            order.append(name)
    return order
