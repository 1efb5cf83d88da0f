"""Swap the imported network's TensorFlow-semantics layers for stock ``torch.nn`` ones.

torch-pruning finds prunable layers by type (``nn.Conv2d``, ``nn.BatchNorm2d``,
``nn.Linear``); the importer's :mod:`training.nsfwjs.ops` layers compute the same thing with
``F.conv2d`` and friends, so the pruner would not see them. Each is replaced in place by a
module computing the same function around a stock layer; the rest of the graph is untouched.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F  # noqa: N812
from torch import Tensor, nn

from training.nsfwjs import ops
from training.nsfwjs.models import NsfwModel


class StockConv(nn.Module):
    """Asymmetric TensorFlow padding, then an ``nn.Conv2d``, then the activation."""

    def __init__(self, layer: ops.Conv2d) -> None:
        super().__init__()
        out_channels, in_per_group, kh, kw = layer.weight.shape
        top, bottom, left, right = layer.pads
        symmetric = top == bottom and left == right
        self.pads = (0, 0, 0, 0) if symmetric else (left, right, top, bottom)
        self.conv = nn.Conv2d(
            in_per_group * layer.groups,
            out_channels,
            (kh, kw),
            stride=layer.stride,
            padding=(top, left) if symmetric else (0, 0),
            dilation=layer.dilation,
            groups=layer.groups,
            bias=layer.bias is not None,
        )
        with torch.no_grad():
            self.conv.weight.copy_(layer.weight)
            if layer.bias is not None and self.conv.bias is not None:
                self.conv.bias.copy_(layer.bias)
        self.activation = layer.activation

    def forward(self, x: Tensor) -> Tensor:
        if any(self.pads):
            x = F.pad(x, self.pads)
        return ops.activate(self.conv(x), self.activation)


class StockDense(nn.Module):
    """An ``nn.Linear`` then the activation."""

    def __init__(self, layer: ops.Dense) -> None:
        super().__init__()
        out_features, in_features = layer.weight.shape
        self.linear = nn.Linear(in_features, out_features, bias=layer.bias is not None)
        with torch.no_grad():
            self.linear.weight.copy_(layer.weight)
            if layer.bias is not None:
                self.linear.bias.copy_(layer.bias)
        self.activation = layer.activation

    def forward(self, x: Tensor) -> Tensor:
        return ops.activate(self.linear(x), self.activation)


class FrozenBatchNorm(nn.BatchNorm2d):
    """Inference-time batch norm whatever the module's mode, unless ``calibrating``.

    The export wraps the model in a new module left in training mode; a plain
    ``nn.BatchNorm2d`` would then normalise with batch statistics (and overwrite its own).
    """

    calibrating: bool = False

    def forward(self, x: Tensor) -> Tensor:
        if self.calibrating:
            return super().forward(x)
        return F.batch_norm(
            x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps
        )


def stock_batch_norm(layer: ops.BatchNorm) -> FrozenBatchNorm:
    """The same inference-time normalization, as a layer torch-pruning knows."""
    norm = FrozenBatchNorm(layer.mean.numel(), eps=layer.eps)
    # Created with track_running_stats, so the buffers exist.
    norm.running_mean = layer.mean.clone()
    norm.running_var = layer.variance.clone()
    with torch.no_grad():
        norm.weight.copy_(layer.weight)
        norm.bias.copy_(layer.bias)
    return norm.eval()


def to_stock_layers(model: NsfwModel) -> NsfwModel:
    """Replace, in place, every convolution, batch norm and dense layer of ``model``'s graph."""
    nodes = model.net.nodes
    for index, node in enumerate(nodes):
        if isinstance(node, ops.Conv2d):
            nodes[index] = StockConv(node)
        elif isinstance(node, ops.BatchNorm):
            nodes[index] = stock_batch_norm(node)
        elif isinstance(node, ops.Dense):
            nodes[index] = StockDense(node)
    return model.eval()
