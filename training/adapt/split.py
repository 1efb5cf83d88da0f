"""Cut an imported nsfwjs network into a frozen prefix and the trainable last blocks.

The imported network is a :class:`~training.nsfwjs.ops.Dag`. A cut before node ``c`` is clean
when the nodes from ``c`` on read exactly one value produced before ``c``: then the prefix can
run once (without gradients, or cached for un-augmented images) and the suffix from that one
value. The default cut is at the input of the block that takes the network to its final spatial
resolution: for MobileNetV2 at 224 px that is before ``block_13`` (14x14x96 in), so the
suffix is blocks 13-16 and ``Conv_1``, about two thirds of the weights but a small share of
the arithmetic. The suffix shares its modules with the model: training it trains the
model, and the model is exported as it is.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor, nn

from training.nsfwjs.models import NsfwModel
from training.nsfwjs.ops import BatchNorm, Conv2d, Dag, Dense


class SplitError(ValueError):
    """The network has no clean cut where one was asked for."""


def _readers_before(dag: Dag, cut: int) -> set[int]:
    """Slots produced before node ``cut`` that nodes from ``cut`` on read."""
    limit = dag.num_inputs + cut
    return {slot for srcs in dag.sources[cut:] for slot in srcs if slot < limit}


def clean_cuts(dag: Dag) -> list[int]:
    """Node indices before which the rest of the network reads exactly one earlier value."""
    return [c for c in range(1, len(dag.nodes)) if len(_readers_before(dag, c)) == 1]


def output_shapes(model: NsfwModel) -> list[tuple[int, ...]]:
    """Each node's output shape for one zero image, in node order."""
    shapes: list[tuple[int, ...]] = []
    hooks = [
        node.register_forward_hook(lambda _m, _i, out: shapes.append(tuple(out.shape)))
        for node in model.net.nodes
    ]
    size = model.cfg.input_size
    try:
        with torch.no_grad():
            model(torch.zeros(1, size, size, 3))
    finally:
        for hook in hooks:
            hook.remove()
    return shapes


def last_stage_cut(model: NsfwModel) -> int:
    """The last clean cut before the first convolution at the network's final spatial
    resolution."""
    shapes = output_shapes(model)
    # Convolutions only: the global pool's 1x1 output is not a resolution the blocks run at.
    convolved = [
        i
        for i, node in enumerate(model.net.nodes)
        if isinstance(node, Conv2d) and len(shapes[i]) == 4
    ]
    if not convolved:
        raise SplitError(f"{model.cfg.name}: no convolutions to cut between")
    final = shapes[convolved[-1]][2:]
    first = next(i for i in convolved if shapes[i][2:] == final)
    before = [c for c in clean_cuts(model.net) if c <= first]
    if not before:
        raise SplitError(f"{model.cfg.name}: no clean cut before node {first}")
    # Inside the block that changes resolution the suffix would read the block's expanded
    # channels (six times its input in MobileNetV2); the block's own input, the latest cut
    # reading at most half as much, is the narrowest place to cut. Without one, the cut stays.
    dag = model.net

    def elements(cut: int) -> int:
        (slot,) = _readers_before(dag, cut)
        shape = shapes[slot - dag.num_inputs] if slot >= dag.num_inputs else (1, size, size, 3)
        count = 1
        for d in shape[1:]:
            count *= d
        return count

    size = model.cfg.input_size
    widest = elements(before[-1])
    narrow = [c for c in before if 2 * elements(c) <= widest]
    return narrow[-1] if narrow else before[-1]


class Prefix(nn.Module):
    """Nodes ``[0, cut)``: NHWC images in [0, 1] -> the one value the suffix reads."""

    def __init__(self, dag: Dag, cut: int) -> None:
        super().__init__()
        (self.slot,) = _readers_before(dag, cut)
        self.dag = dag
        self.cut = cut

    def forward(self, images: Tensor) -> Tensor:
        dag = self.dag
        values: list[Tensor | None] = [images, *([None] * self.cut)]
        for i in range(self.cut):
            values[dag.num_inputs + i] = dag.nodes[i](*[values[s] for s in dag.sources[i]])
        out = values[self.slot]
        if out is None:
            raise RuntimeError(f"slot {self.slot} was not produced before node {self.cut}")
        return out


class Suffix(nn.Module):
    """Nodes ``[cut, end)``: the prefix's value -> (probs, embedding)."""

    def __init__(self, dag: Dag, cut: int) -> None:
        super().__init__()
        (self.slot,) = _readers_before(dag, cut)
        self.nodes = nn.ModuleList(dag.nodes[cut:])
        self.sources = dag.sources[cut:]
        self.outputs = dag.outputs
        self.offset = dag.num_inputs + cut
        self.total = dag.num_inputs + len(dag.nodes)

    def forward(self, features: Tensor) -> tuple[Tensor, Tensor]:
        values: dict[int, Tensor] = {self.slot: features}
        for i, node in enumerate(self.nodes):
            values[self.offset + i] = node(*[values[s] for s in self.sources[i]])
        probs, embedding = (values[s] for s in self.outputs)
        return probs, embedding

    def batch_norms(self) -> list[BatchNorm]:
        return [m for m in self.nodes if isinstance(m, BatchNorm)]

    def frozen_head(self) -> Iterator[nn.Parameter]:
        """The five-class classifier's weights (the Dense layers), which never train."""
        for module in self.nodes:
            if isinstance(module, Dense):
                yield from module.parameters()


def split(model: NsfwModel, cut: int | None = None) -> tuple[Prefix, Suffix]:
    """Prefix and suffix sharing ``model``'s modules; every prefix weight is frozen, and so
    is the five-class head in the suffix."""
    at = last_stage_cut(model) if cut is None else cut
    if at not in clean_cuts(model.net):
        raise SplitError(f"{model.cfg.name}: node {at} is not a clean cut")
    prefix, suffix = Prefix(model.net, at), Suffix(model.net, at)
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    for parameter in suffix.parameters():
        parameter.requires_grad_(True)
    for parameter in suffix.frozen_head():
        parameter.requires_grad_(False)
    return prefix, suffix


def reestimate_batch_norm(suffix: Suffix, features: Tensor) -> None:
    """Step A: set every suffix BatchNorm's mean and variance to the statistics of its input
    over ``features`` (all at once, one pass).

    Each layer normalises with the statistics just measured before the next layer is
    measured, so later layers see their inputs as they will at inference: the result is exact
    for this set, not a running average.
    """

    def measure(module: nn.Module, inputs: tuple[Tensor, ...]) -> None:
        if not isinstance(module, BatchNorm):
            return
        x = inputs[0].to(torch.float64)
        module.mean.copy_(x.mean(dim=(0, 2, 3)).to(module.mean.dtype))
        module.variance.copy_(x.var(dim=(0, 2, 3), unbiased=False).to(module.variance.dtype))

    hooks = [bn.register_forward_pre_hook(measure) for bn in suffix.batch_norms()]
    try:
        with torch.no_grad():
            suffix(features)
    finally:
        for hook in hooks:
            hook.remove()
