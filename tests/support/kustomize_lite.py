"""Render deploy/'s kustomizations without the kustomize binary, for machines that lack it.

Only the features deploy/ uses: ``resources`` (files and directories), ``configMapGenerator``
(``files``, ``literals``, ``behavior: merge``, ``options``), ``namespace``, ``labels`` with
``includeTemplates``, ``images`` (in pod templates, CronJobs' included) and JSON 6902
``patches`` targeted by kind and name.
Generated ConfigMap names get a content-hash suffix and references to them are rewritten,
as kustomize does (the suffix itself differs from kustomize's). Anything else in a
kustomization is refused, so the renderer cannot silently drop a feature. When ``kubectl`` is
present the tests check that both renderings agree.
"""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Any

import yaml

Resource = dict[str, Any]

_SUPPORTED = {
    "apiVersion",
    "kind",
    "resources",
    "configMapGenerator",
    "namespace",
    "labels",
    "images",
    "patches",
}
_NAMESPACED_EXCEPT = {"Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition"}


class KustomizeError(Exception):
    pass


def render(directory: Path) -> list[Resource]:
    """Every resource the kustomization in ``directory`` produces."""
    resources, generated = _build(directory)
    _rename_generated(resources, generated)
    return resources


def _load_kustomization(directory: Path) -> dict[str, Any]:
    path = directory / "kustomization.yaml"
    if not path.is_file():
        raise KustomizeError(f"{directory} has no kustomization.yaml")
    spec: dict[str, Any] = yaml.safe_load(path.read_text()) or {}
    unknown = set(spec) - _SUPPORTED
    if unknown:
        raise KustomizeError(f"{path}: unsupported fields {sorted(unknown)}")
    return spec


def _build(directory: Path) -> tuple[list[Resource], dict[str, str]]:
    spec = _load_kustomization(directory)
    resources: list[Resource] = []
    generated: dict[str, str] = {}  # ConfigMap name -> name with hash, filled at the end
    for entry in spec.get("resources", []):
        target = (directory / entry).resolve()
        if target.is_dir():
            child, child_generated = _build(target)
            resources.extend(child)
            generated.update(child_generated)
        else:
            resources.extend(doc for doc in yaml.safe_load_all(target.read_text()) if doc)
    for generator in spec.get("configMapGenerator", []):
        _generate(directory, generator, resources, generated)
    for patch in spec.get("patches", []):
        _patch(resources, patch)
    for image in spec.get("images", []):
        _set_image(resources, image)
    for label in spec.get("labels", []):
        _label(resources, label)
    if "namespace" in spec:
        for resource in resources:
            if resource["kind"] not in _NAMESPACED_EXCEPT:
                resource.setdefault("metadata", {})["namespace"] = spec["namespace"]
    return resources, generated


def _generate(
    directory: Path, generator: dict[str, Any], resources: list[Resource], generated: dict[str, str]
) -> None:
    name = generator["name"]
    data: dict[str, str] = {}
    for file in generator.get("files", []):
        data[Path(file).name] = (directory / file).read_text()
    for literal in generator.get("literals", []):
        key, _, value = literal.partition("=")
        data[key] = value
    options = generator.get("options", {})
    if generator.get("behavior") == "merge":
        existing = next(
            (r for r in resources if r["kind"] == "ConfigMap" and r["metadata"]["name"] == name),
            None,
        )
        if existing is None:
            raise KustomizeError(f"configMapGenerator {name}: nothing to merge into")
        existing["data"].update(data)
        return
    config_map: Resource = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name},
        "data": data,
    }
    if options.get("labels"):
        config_map["metadata"]["labels"] = dict(options["labels"])
    resources.append(config_map)
    if not options.get("disableNameSuffixHash"):
        generated[name] = ""


def _rename_generated(resources: list[Resource], generated: dict[str, str]) -> None:
    for resource in resources:
        name = resource["metadata"]["name"]
        if resource["kind"] == "ConfigMap" and name in generated:
            digest = hashlib.sha256(json.dumps(resource["data"], sort_keys=True).encode())
            generated[name] = f"{name}-{digest.hexdigest()[:10]}"
            resource["metadata"]["name"] = generated[name]
    for resource in resources:
        if resource["kind"] != "ConfigMap":
            _rewrite_references(resource, generated)


def _rewrite_references(node: Any, generated: dict[str, str]) -> None:
    if isinstance(node, dict):
        for key, value in node.items():
            referenced = isinstance(value, dict) and value.get("name") in generated
            if key in ("configMapRef", "configMapKeyRef", "configMap") and referenced:
                value["name"] = generated[value["name"]]
            _rewrite_references(value, generated)
    elif isinstance(node, list):
        for item in node:
            _rewrite_references(item, generated)


def _patch(resources: list[Resource], patch: dict[str, Any]) -> None:
    target = patch["target"]
    matches = [
        r
        for r in resources
        if r["kind"] == target["kind"] and r["metadata"]["name"] == target["name"]
    ]
    if not matches:
        raise KustomizeError(f"patch target {target} matches nothing")
    for operation in yaml.safe_load(patch["patch"]):
        for resource in matches:
            _apply(resource, operation)


def _apply(resource: Resource, operation: dict[str, Any]) -> None:
    *parents, last = [
        part.replace("~1", "/").replace("~0", "~") for part in operation["path"][1:].split("/")
    ]
    node: Any = resource
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]
    op = operation["op"]
    value = copy.deepcopy(operation.get("value"))
    if isinstance(node, list):
        if op == "add":
            node.insert(len(node) if last == "-" else int(last), value)
        elif op == "replace":
            node[int(last)] = value
        elif op == "remove":
            del node[int(last)]
        else:
            raise KustomizeError(f"unsupported patch op {op}")
    elif op in ("add", "replace"):
        if op == "replace" and last not in node:
            raise KustomizeError(f"replace of missing {operation['path']}")
        node[last] = value
    elif op == "remove":
        del node[last]
    else:
        raise KustomizeError(f"unsupported patch op {op}")


def _containers(resource: Resource) -> list[dict[str, Any]]:
    spec = resource.get("spec", {})
    if resource["kind"] == "CronJob":
        spec = spec.get("jobTemplate", {}).get("spec", {})
    pod = spec.get("template", {}).get("spec", {})
    return [*pod.get("initContainers", []), *pod.get("containers", [])]


def _set_image(resources: list[Resource], image: dict[str, str]) -> None:
    for resource in resources:
        for container in _containers(resource):
            if container.get("image", "").split(":")[0] == image["name"]:
                container["image"] = f"{image.get('newName', image['name'])}:{image['newTag']}"


def _label(resources: list[Resource], label: dict[str, Any]) -> None:
    pairs = label["pairs"]
    if label.get("includeSelectors"):
        raise KustomizeError("labels with includeSelectors are not supported")
    for resource in resources:
        resource.setdefault("metadata", {}).setdefault("labels", {}).update(pairs)
        template = resource.get("spec", {}).get("template")
        if label.get("includeTemplates") and isinstance(template, dict):
            template.setdefault("metadata", {}).setdefault("labels", {}).update(pairs)
