"""Structured filter pruning of the imported MobileNetV2 with torch-pruning.

Whole output channels (filters) of every convolution are removed by L2 magnitude, the same
fraction in each layer, rounded to multiples of 8 (vectorised CPU kernels run whole lanes).
The last 1x1 convolution (whose pooled output is the embedding) and the dense classifier keep
their output channels, so the model still gives 5 probabilities and a 1280-d embedding; its
input channels shrink with the layer before it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch_pruning as tp
from torch import nn

from training.nsfwjs.models import NsfwModel
from training.prune.layers import StockConv, StockDense, to_stock_layers

logger = logging.getLogger(__name__)

ROUND_TO = 8


@dataclass(frozen=True)
class Size:
    """What torch-pruning counts for one forward pass of one image."""

    params: int
    flops: int
    """Multiply-accumulates, as ``tp.utils.count_ops_and_params`` counts them."""


def example_input(model: NsfwModel) -> torch.Tensor:
    size = model.cfg.input_size
    return torch.rand(1, size, size, 3, generator=torch.Generator().manual_seed(0))


def measure(model: NsfwModel) -> Size:
    """Parameters and FLOPs of ``model`` at batch 1."""
    with torch.no_grad():
        flops, params = tp.utils.count_ops_and_params(model, example_input(model))
    return Size(params=int(params), flops=int(flops))


def kept_layers(model: NsfwModel) -> list[nn.Module]:
    """The layers whose output channels must stay: the embedding's convolution and the head."""
    convs = [node for node in model.net.nodes if isinstance(node, StockConv)]
    dense = [node.linear for node in model.net.nodes if isinstance(node, StockDense)]
    return [convs[-1].conv, *dense]


def prune_filters(model: NsfwModel, ratio: float) -> NsfwModel:
    """Remove ``ratio`` of the filters of every prunable convolution of ``model``, in place.

    ``model`` comes straight from ``training.nsfwjs.models.load``; its layers are swapped for
    stock ones first. Raises ValueError for a ratio outside (0, 1).
    """
    if not 0.0 < ratio < 1.0:
        raise ValueError(f"pruning ratio must be between 0 and 1 (exclusive), got {ratio}")
    to_stock_layers(model)
    pruner = tp.pruner.MetaPruner(
        model,
        example_input(model),
        importance=tp.importance.MagnitudeImportance(p=2),
        pruning_ratio=ratio,
        ignored_layers=kept_layers(model),
        round_to=ROUND_TO,
    )
    pruner.step()
    return model.eval()
