"""The nodes of a TensorFlow graph-model (``modelTopology.node``) and their attributes, read
and checked: what ``training.nsfwjs.graph`` builds modules from."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from training.nsfwjs import ops
from training.nsfwjs.errors import ImportFailed
from training.nsfwjs.jsliteral import JsObject, JsValue
from training.nsfwjs.ops import Shape
from training.nsfwjs.tfjs import expect_int, expect_list, expect_object, expect_str


@dataclass(frozen=True)
class Node:
    name: str
    op: str
    inputs: tuple[str, ...]
    attr: JsObject
    where: str


def node_attr(node: Node, key: str) -> JsObject | None:
    value = node.attr.get(key)
    return None if value is None else expect_object(value, f"{node.where}: attr {key}")


def decode_attr(value: JsValue, where: str) -> str:
    try:
        return base64.b64decode(expect_str(value, where), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError) as exc:
        raise ImportFailed(f"{where}: not a base64 UTF-8 string ({exc})") from exc


def attr_str(node: Node, key: str, default: str) -> str:
    attr = node_attr(node, key)
    return default if attr is None else decode_attr(attr.get("s"), f"{node.where}: attr {key}")


def attr_bool(node: Node, key: str) -> bool:
    attr = node_attr(node, key)
    return attr is not None and attr.get("b") is True


def attr_list(node: Node, key: str, kind: str) -> list[JsValue]:
    attr = node_attr(node, key)
    if attr is None:
        return []
    items = expect_object(attr.get("list", {}), f"{node.where}: attr {key}").get(kind, [])
    return expect_list(items, f"{node.where}: attr {key}")


def attr_ints(node: Node, key: str, default: Sequence[int]) -> tuple[int, ...]:
    where = f"{node.where}: attr {key}"
    items = attr_list(node, key, "i")
    if not items:
        return tuple(default)
    return tuple(
        int(expect_str(i, where)) if isinstance(i, str) else expect_int(i, where) for i in items
    )


def attr_strs(node: Node, key: str) -> list[str]:
    return [decode_attr(s, f"{node.where}: attr {key}") for s in attr_list(node, key, "s")]


def nhwc_pair(node: Node, key: str, default: int) -> tuple[int, int]:
    values = attr_ints(node, key, (1, default, default, 1))
    if len(values) != 4 or values[0] != 1 or values[3] != 1:
        raise ImportFailed(f"{node.where}: {key} {list(values)} must be [1, h, w, 1]")
    return values[1], values[2]


def check_nhwc(node: Node) -> None:
    fmt = attr_str(node, "data_format", "NHWC")
    if fmt != "NHWC":
        raise ImportFailed(f"{node.where}: data_format {fmt!r} is not supported (NHWC only)")


def parse_nodes(topology: JsObject, source: str) -> dict[str, Node]:
    nodes: dict[str, Node] = {}
    for i, raw in enumerate(expect_list(topology.get("node"), f"{source}: modelTopology.node")):
        entry = expect_object(raw, f"{source}: node[{i}]")
        name = expect_str(entry.get("name"), f"{source}: node[{i}].name")
        where = f"{source}: node {name!r}"
        if name in nodes:
            raise ImportFailed(f"{where}: the name is used twice")
        inputs = []
        for ref in expect_list(entry.get("input", []), f"{where}: input"):
            text = expect_str(ref, f"{where}: input")
            if text.startswith("^"):
                continue  # control dependency: no data flows
            base, _, index = text.partition(":")
            if index not in ("", "0"):
                raise ImportFailed(f"{where}: input {text!r} reads output {index}; only 0 exists")
            inputs.append(base)
        op = expect_str(entry.get("op"), f"{where}: op")
        nodes[name] = Node(
            name=name,
            op=op,
            inputs=tuple(inputs),
            attr=expect_object(entry.get("attr", {}), f"{where}: attr"),
            where=f"{where} ({op})",
        )
    return nodes


def node_order(nodes: Mapping[str, Node], roots: Sequence[str], source: str) -> list[str]:
    inputs_of = {name: item.inputs for name, item in nodes.items()}
    return ops.topological_order(inputs_of, roots, source, "node")


def placeholder_shape(node: Node) -> Shape:
    attr = node_attr(node, "shape")
    shape = expect_object(attr.get("shape") if attr else None, f"{node.where}: shape")
    dims = []
    for dim in expect_list(shape.get("dim"), f"{node.where}: shape.dim"):
        size = expect_object(dim, f"{node.where}: shape.dim").get("size")
        dims.append(
            int(expect_str(size, f"{node.where}: dim"))
            if isinstance(size, str)
            else expect_int(size, f"{node.where}: dim")
        )
    if len(dims) != 4 or any(d <= 0 for d in dims[1:]):
        raise ImportFailed(f"{node.where}: input shape {dims} is not [batch, H, W, C]")
    return tuple(dims[1:])
