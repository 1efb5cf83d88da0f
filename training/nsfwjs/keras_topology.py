"""The layer graph of a Keras layers-model (``modelTopology.model_config``) as TensorFlow.js
stores it: each layer's class, config and inputs, and their order; what
``training.nsfwjs.layers`` builds modules from."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from training.nsfwjs import ops
from training.nsfwjs.errors import ImportFailed
from training.nsfwjs.jsliteral import JsObject, JsValue
from training.nsfwjs.tfjs import expect_list, expect_object, expect_str


@dataclass(frozen=True)
class Layer:
    name: str
    class_name: str
    config: JsObject
    inbound: tuple[str, ...]


def _inbound(value: JsValue, where: str) -> tuple[str, ...]:
    nodes = expect_list(value if value is not None else [], f"{where}: inbound_nodes")
    if not nodes:
        return ()
    if len(nodes) > 1:
        raise ImportFailed(f"{where}: shared layers (called {len(nodes)} times) are not supported")
    names = []
    for entry in expect_list(nodes[0], f"{where}: inbound_nodes[0]"):
        ref = expect_list(entry, f"{where}: inbound node")
        if len(ref) < 3 or ref[1] != 0 or ref[2] != 0:
            raise ImportFailed(f"{where}: inbound {ref[:3]} is not a layer's first output")
        names.append(expect_str(ref[0], f"{where}: inbound layer name"))
    return tuple(names)


def _layer_refs(value: JsValue, where: str) -> list[str]:
    refs = []
    for entry in expect_list(value, where):
        ref = expect_list(entry, where)
        if len(ref) < 3 or ref[1] != 0 or ref[2] != 0:
            raise ImportFailed(f"{where}: {ref} is not a layer's first output")
        refs.append(expect_str(ref[0], where))
    return refs


def parse_topology(
    topology: JsObject, source: str
) -> tuple[dict[str, Layer], list[str], list[str]]:
    model = expect_object(topology.get("model_config"), f"{source}: model_config")
    class_name = model.get("class_name")
    if class_name not in ("Model", "Functional"):
        raise ImportFailed(
            f"{source}: model class {class_name!r} is not supported (functional Model only)"
        )
    config = expect_object(model.get("config"), f"{source}: model_config.config")
    layers: dict[str, Layer] = {}
    for i, raw in enumerate(expect_list(config.get("layers"), f"{source}: layers")):
        entry = expect_object(raw, f"{source}: layers[{i}]")
        name = expect_str(entry.get("name"), f"{source}: layers[{i}].name")
        where = f"{source}: layer {name!r}"
        if name in layers:
            raise ImportFailed(f"{where}: the name is used twice")
        layers[name] = Layer(
            name=name,
            class_name=expect_str(entry.get("class_name"), f"{where}: class_name"),
            config=expect_object(entry.get("config"), f"{where}: config"),
            inbound=_inbound(entry.get("inbound_nodes"), where),
        )
    inputs = _layer_refs(config.get("input_layers"), f"{source}: input_layers")
    outputs = _layer_refs(config.get("output_layers"), f"{source}: output_layers")
    return layers, inputs, outputs


def layer_order(layers: Mapping[str, Layer], roots: Sequence[str], source: str) -> list[str]:
    inputs_of = {name: item.inbound for name, item in layers.items()}
    return ops.topological_order(inputs_of, roots, source, "layer")
