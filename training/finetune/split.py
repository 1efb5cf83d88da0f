"""The imported MobileNetV2 cut in two at the start of its last ``k`` inverted-residual blocks.

The imported network is one :class:`~training.nsfwjs.ops.Dag` whose nodes follow the Keras
layers in topological order. The cut gives a frozen *stem* (input to the output of block
``16 - k``) and a trainable *tail* (the last ``k`` blocks, ``Conv_1``, the pool and the
nsfwjs classifier). Both share their modules with the original network, so training the
tail changes the full model in place and the usual export path sees the tuned weights.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from torch import nn

from training.nsfwjs.archive import NsfwjsArchive
from training.nsfwjs.errors import ImportFailed
from training.nsfwjs.jsliteral import bundle_export
from training.nsfwjs.keras_topology import layer_order, parse_topology
from training.nsfwjs.models import NsfwModel, get_config, load
from training.nsfwjs.ops import Dag, Dense
from training.nsfwjs.tfjs import parse_model_json

logger = logging.getLogger(__name__)

MODEL = "mobilenet_v2"
LAST_BLOCK = 16
"""Keras MobileNetV2 numbers its inverted-residual blocks ``block_1`` .. ``block_16``."""
MAX_BLOCKS = 4


@dataclass(frozen=True)
class SplitBackbone:
    """A loaded backbone and its two halves (sharing modules with ``model``)."""

    model: NsfwModel
    stem: Dag
    """NHWC float in [0, 1] -> the NCHW activation entering the first tuned block."""
    tail: Dag
    """That activation -> (probs [N, 5], embedding [N, 1280])."""
    blocks: int
    boundary: str
    """Name of the Keras layer whose output the tail reads."""

    def tuned_parameters(self) -> list[nn.Parameter]:
        """Parameters of the tail's convolutions and batch norms; the nsfwjs classifier (the
        Dense layers) stays frozen so that its five classes keep their meaning."""
        return [
            parameter
            for node in self.tail.nodes
            if not isinstance(node, Dense)
            for parameter in node.parameters()
        ]


def layer_names(archive: NsfwjsArchive, model: str = MODEL) -> list[str]:
    """Keras layer names in the order ``training.nsfwjs.layers`` builds its nodes."""
    cfg = get_config(model)
    files = archive.model_files(cfg.archive_dir)
    source = f"dist/models/{cfg.archive_dir}/model.min.js"
    if "model.min.js" not in files:
        raise ImportFailed(f"{archive.name}: {source} is missing")
    parsed = parse_model_json(bundle_export(files["model.min.js"], source=source), source=source)
    layers, _, outputs = parse_topology(parsed.topology, source)
    # The same roots as build_layers_model, so node i of the Dag is layer order[i].
    return layer_order(layers, [*outputs, cfg.probs_output, cfg.embedding_output], source)


def split(model: NsfwModel, names: list[str], blocks: int) -> SplitBackbone:
    """Cut ``model`` before ``block_<17-blocks>_expand``.

    Raises ImportFailed when ``blocks`` is out of range or a tail node would read a value
    from inside the stem (the cut must be a single activation).
    """
    if not 1 <= blocks <= MAX_BLOCKS:
        raise ImportFailed(f"--blocks must be between 1 and {MAX_BLOCKS}, not {blocks}")
    net = model.net
    if len(names) != len(net.nodes) or net.num_inputs != 1:
        raise ImportFailed(
            f"{model.cfg.name}: {len(names)} layer names for {len(net.nodes)} network nodes"
        )
    first = f"block_{LAST_BLOCK - blocks + 1}_expand"
    if first not in names:
        raise ImportFailed(f"{model.cfg.name}: no layer {first!r} to cut at")
    cut = names.index(first)
    # Slot s holds the input (s = 0) or the output of node s - 1; the tail's input is slot cut.
    for index in range(cut, len(net.nodes)):
        if any(slot < cut for slot in net.sources[index]):
            raise ImportFailed(
                f"{model.cfg.name}: layer {names[index]!r} reads inside the frozen stem; "
                f"cannot cut before {first!r}"
            )
    stem = Dag(
        list(net.nodes[:cut]),
        net.sources[:cut],
        [cut],
        num_inputs=1,
        input_shape=net.input_shape,
    )
    tail = Dag(
        list(net.nodes[cut:]),
        [[slot - cut for slot in sources] for sources in net.sources[cut:]],
        [slot - cut for slot in net.outputs],
        num_inputs=1,
        input_shape=(),
    )
    logger.info(
        "tuning the last %d block(s): from %s on (%d nodes)", blocks, first, len(tail.nodes)
    )
    return SplitBackbone(model, stem, tail, blocks, names[cut - 1])


def load_split(archive: NsfwjsArchive, blocks: int) -> SplitBackbone:
    """Load the pretrained MobileNetV2 and cut it; raises ImportFailed."""
    model = load(MODEL, archive=archive)
    return split(model, layer_names(archive), blocks)
