"""The review page's manifests, in every overlay: `modstream review` from the consumer image,
probed on its metrics port, non-root, its Secrets mounted, on the consumers' brokers under
its own client id, reachable through the ingress controller only and scraped like the
consumers.
"""

from __future__ import annotations

import functools
import json
import os
import re
from pathlib import PurePosixPath
from typing import Any

import pytest

from consumer.runtime.settings import Settings
from tests.support.kustomize_lite import render
from tests.support.paths import DEPLOY

OVERLAYS = sorted(
    path.name for path in (DEPLOY / "overlays").iterdir() if (path / "kustomization.yaml").is_file()
)
DOCKERFILE = DEPLOY / "docker" / "consumer.Dockerfile"
REVIEW = "modstream-review"
REVIEWERS_SECRET = "modstream-review-reviewers"
CSRF_SECRET = "modstream-review-csrf"
INGRESS_NAMESPACE = {"kubernetes.io/metadata.name": "ingress-nginx"}
KAFKA_NAMESPACE = {"kubernetes.io/metadata.name": "kafka"}


@functools.cache
def _rendered(overlay: str) -> list[dict[str, Any]]:
    return render(DEPLOY / "overlays" / overlay)


def _one(overlay: str, kind: str, name: str) -> dict[str, Any]:
    (found,) = (
        r for r in _rendered(overlay) if r["kind"] == kind and r["metadata"]["name"] == name
    )
    return found


def _pod(overlay: str, name: str = REVIEW) -> dict[str, Any]:
    template: dict[str, Any] = _one(overlay, "Deployment", name)["spec"]["template"]
    return template


def _container(overlay: str, name: str = REVIEW) -> dict[str, Any]:
    container: dict[str, Any] = _pod(overlay, name)["spec"]["containers"][0]
    return container


def _literal_env(overlay: str, container: dict[str, Any]) -> dict[str, str]:
    """What the container's environment holds, apart from values read from Secrets."""
    maps = {r["metadata"]["name"]: r for r in _rendered(overlay) if r["kind"] == "ConfigMap"}
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        env |= maps[source["configMapRef"]["name"]].get("data", {})
    return env | {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}


def _secret_refs(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        e["name"]: e["valueFrom"]["secretKeyRef"]
        for e in container.get("env", [])
        if "secretKeyRef" in e.get("valueFrom", {})
    }


def _settings(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    for name in list(os.environ):
        if name.startswith("MODSTREAM_"):
            monkeypatch.delenv(name)
    for name, value in env.items():
        if name.startswith("MODSTREAM_"):
            monkeypatch.setenv(name, value)
    return Settings()


def _mounted_volume(pod: dict[str, Any], path: PurePosixPath) -> dict[str, Any]:
    """The volume mounted at ``path``'s folder (the container's first mount that holds it)."""
    container = pod["spec"]["containers"][0]
    mount = next(
        m for m in container["volumeMounts"] if PurePosixPath(m["mountPath"]) == path.parent
    )
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    return {**volumes[mount["name"]], "readOnly": mount.get("readOnly", False)}


def _entrypoint() -> list[str]:
    final_stage = re.split(r"^FROM ", DOCKERFILE.read_text(), flags=re.MULTILINE)[-1]
    (line,) = (line for line in final_stage.splitlines() if line.startswith("ENTRYPOINT "))
    command: list[str] = json.loads(line.removeprefix("ENTRYPOINT "))
    return command


def _selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())


def _policy_rules(overlay: str, labels: dict[str, str], direction: str) -> list[dict[str, Any]]:
    return [
        rule
        for policy in _rendered(overlay)
        if policy["kind"] == "NetworkPolicy" and _selects(policy["spec"]["podSelector"], labels)
        for rule in policy["spec"].get(direction, [])
    ]


def _ports(rule: dict[str, Any]) -> set[int]:
    return {port["port"] for port in rule.get("ports", [])}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_page_runs_modstream_review_from_the_consumer_image(overlay: str) -> None:
    container = _container(overlay)
    assert container["image"] == _container(overlay, "modstream-consumer")["image"]
    assert [*container.get("command", _entrypoint()), *container["args"]] == [
        "modstream",
        "review",
    ]


def test_the_consumer_image_installs_the_review_extra() -> None:
    build_stage = re.split(r"^FROM ", DOCKERFILE.read_text(), flags=re.MULTILINE)[1]
    installs = [line for line in build_stage.splitlines() if "pip install" in line]
    assert installs == ['RUN pip install --no-cache-dir --prefix=/install "./[review]"']


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_page_is_probed_on_its_metrics_port(overlay: str) -> None:
    container = _container(overlay)
    env = _literal_env(overlay, container)
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert ports == {
        "http": int(env["MODSTREAM_REVIEW__PORT"]),
        "metrics": int(env["MODSTREAM_METRICS__PORT"]),
    }
    assert ports["http"] == 8080
    for probe, path in (
        ("startupProbe", "/healthz"),
        ("livenessProbe", "/healthz"),
        ("readinessProbe", "/readyz"),
    ):
        assert container[probe]["httpGet"] == {"path": path, "port": "metrics"}, probe


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_page_runs_unprivileged_and_bounded(overlay: str) -> None:
    deployment = _one(overlay, "Deployment", REVIEW)
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    assert pod["automountServiceAccountToken"] is False
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }
    assert {"cpu", "memory"} <= set(container["resources"]["requests"])
    assert "memory" in container["resources"]["limits"]
    # Writable scratch space on a read-only root filesystem.
    assert any(m["mountPath"] == "/tmp" for m in container["volumeMounts"])
    assert deployment["spec"]["replicas"] == (1 if overlay == "dev" else 2)
    budget = _one(overlay, "PodDisruptionBudget", REVIEW)
    assert _selects(budget["spec"]["selector"], _pod(overlay)["metadata"]["labels"])
    assert budget["spec"]["maxUnavailable"] == 1


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_secrets_reach_the_page(overlay: str) -> None:
    pod = _pod(overlay)
    container = pod["spec"]["containers"][0]
    reviewers = PurePosixPath(_literal_env(overlay, container)["MODSTREAM_REVIEW__REVIEWERS_FILE"])
    volume = _mounted_volume(pod, reviewers)
    assert volume["readOnly"] is True
    assert volume["secret"]["secretName"] == REVIEWERS_SECRET
    assert volume["secret"]["items"] == [{"key": reviewers.name, "path": reviewers.name}]
    assert "optional" not in volume["secret"]
    # Shared by the replicas and required: without it each pod would sign with its own key.
    assert _secret_refs(container)["MODSTREAM_REVIEW__CSRF_SECRET"] == {
        "name": CSRF_SECRET,
        "key": "secret",
    }
    # Created in the cluster, never shipped: an apply must not overwrite the real ones.
    assert not [r for r in _rendered(overlay) if r["kind"] == "Secret"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_page_uses_the_consumers_brokers_under_its_own_client_id(
    overlay: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    review, consumer = _container(overlay), _container(overlay, "modstream-consumer")
    page = _settings(
        {**_literal_env(overlay, review), "MODSTREAM_REVIEW__CSRF_SECRET": "0" * 64}, monkeypatch
    )
    consumers = _settings(_literal_env(overlay, consumer), monkeypatch)
    assert page.review.port == 8080
    assert page.review.auth == "token"
    assert page.kafka.client_id != consumers.kafka.client_id
    own = {"client_id"}
    assert page.kafka.model_dump(exclude=own) == consumers.kafka.model_dump(exclude=own)
    assert page.topics == consumers.topics
    refs = _secret_refs(review)
    for name, ref in _secret_refs(consumer).items():
        if name.startswith("MODSTREAM_KAFKA__"):
            assert refs[name] == ref, name
    # The policy names the review topics; the CA, where the brokers need TLS.
    for path in (page.policy.path, page.kafka.ssl_cafile):
        if path is not None:
            assert _mounted_volume(_pod(overlay), PurePosixPath(path))["readOnly"] is True


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_page_is_served_and_scraped(overlay: str) -> None:
    labels = _pod(overlay)["metadata"]["labels"]
    service = _one(overlay, "Service", REVIEW)
    assert service["spec"]["selector"].items() <= labels.items()
    assert [(p["port"], p["targetPort"]) for p in service["spec"]["ports"]] == [(80, "http")]
    # Scraped from the pods as the consumers are, not through the page's Service.
    monitor = _one(overlay, "PodMonitor", REVIEW)
    assert _selects(monitor["spec"]["selector"], labels)
    assert [e["port"] for e in monitor["spec"]["podMetricsEndpoints"]] == ["metrics"]
    consumer_monitor = _one(overlay, "PodMonitor", "modstream-consumer")
    assert not _selects(consumer_monitor["spec"]["selector"], labels)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_network_lets_the_page_reach_kafka_and_reviewers_reach_the_page(
    overlay: str,
) -> None:
    labels = _pod(overlay)["metadata"]["labels"]
    ingress = _policy_rules(overlay, labels, "ingress")
    # The page only from the ingress controller's namespace; metrics and probes from anywhere.
    page = [rule for rule in ingress if 8080 in _ports(rule)]
    assert page
    assert all(
        rule.get("from") == [{"namespaceSelector": {"matchLabels": INGRESS_NAMESPACE}}]
        for rule in page
    )
    assert any("from" not in rule and _ports(rule) == {9400} for rule in ingress)
    egress = _policy_rules(overlay, labels, "egress")
    kafka = [
        rule
        for rule in egress
        if {"namespaceSelector": {"matchLabels": KAFKA_NAMESPACE}} in rule.get("to", [])
    ]
    assert {9092, 9093} <= set().union(*map(_ports, kafka))
    assert any(53 in _ports(rule) for rule in egress)


def test_heads_overlay_gives_the_page_the_served_model_repository(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pod = _pod("heads")
    settings = _settings(_literal_env("heads", pod["spec"]["containers"][0]), monkeypatch)
    assert settings.review.saliency_repository is not None
    volume = _mounted_volume(pod, PurePosixPath(settings.review.saliency_repository, "model"))
    triton = {v["name"]: v for v in _pod("heads", "modstream-triton")["spec"]["volumes"]}
    claim = triton["models"]["persistentVolumeClaim"]["claimName"]
    assert volume["persistentVolumeClaim"] == {"claimName": claim, "readOnly": True}
    assert volume["readOnly"] is True
    for overlay in ("dev", "prod"):
        env = _literal_env(overlay, _container(overlay))
        assert "MODSTREAM_REVIEW__SALIENCY_REPOSITORY" not in env, overlay
