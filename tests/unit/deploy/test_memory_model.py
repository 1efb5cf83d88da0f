"""The consumer's memory request follows from the memory model (docs/memory.md, bench/memory.py)
and the settings each overlay gives it: the model's bound fits in the request, the limit is
above the request, and the documented figures are the ones the model uses."""

from __future__ import annotations

import os
import re
from typing import Any

import pytest

from bench.memory_model import ALLOCATOR_ENV, MODEL, memory_bound, memory_terms
from consumer.runtime.settings import MiB, Settings
from tests.support.kustomize_lite import render
from tests.support.paths import DEPLOY, REPO_ROOT

OVERLAYS = sorted(
    path.name for path in (DEPLOY / "overlays").iterdir() if (path / "kustomization.yaml").is_file()
)
MEMORY_INPUTS = (
    "MODSTREAM_FLOW__MAX_INFLIGHT_BYTES",
    "MODSTREAM_KAFKA__FETCH_MAX_BYTES",
    "MODSTREAM_IMAGING__DECODE_WORKERS",
    "MODSTREAM_IMAGING__MAX_DECODE_BYTES",
)
_UNITS = {"": 1, "Ki": 1024, "Mi": MiB, "Gi": 1024 * MiB, "k": 1000, "M": 1000**2, "G": 1000**3}


def quantity_bytes(value: str) -> int:
    """A Kubernetes memory quantity (``1Gi``, ``1280Mi``, ``512M``, ``1073741824``) in bytes."""
    match = re.fullmatch(r"(\d+)(Ki|Mi|Gi|k|M|G)?", value)
    if match is None:
        raise ValueError(f"unsupported quantity {value!r}")
    return int(match[1]) * _UNITS[match[2] or ""]


def _consumer(overlay: str) -> tuple[dict[str, Any], dict[str, str]]:
    """The consumer container and the environment it gets in ``overlay`` (literal values)."""
    resources = render(DEPLOY / "overlays" / overlay)
    deployment = next(
        r
        for r in resources
        if r["kind"] == "Deployment" and r["metadata"]["name"] == "modstream-consumer"
    )
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    maps = {r["metadata"]["name"]: r for r in resources if r["kind"] == "ConfigMap"}
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        env |= maps[source["configMapRef"]["name"]].get("data", {})
    env |= {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}
    return container, env


def _settings(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    for name in list(os.environ):
        if name.startswith("MODSTREAM_"):
            monkeypatch.delenv(name)
    for name, value in env.items():
        if name.startswith("MODSTREAM_"):
            monkeypatch.setenv(name, value)
    return Settings()


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_memory_request_covers_the_model_bound(
    overlay: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    container, env = _consumer(overlay)
    assert set(MEMORY_INPUTS) <= set(env), "pin the memory model's inputs in modstream-config"
    bound = memory_bound(_settings(env, monkeypatch))
    request = quantity_bytes(container["resources"]["requests"]["memory"])
    limit = quantity_bytes(container["resources"]["limits"]["memory"])

    assert bound <= request, f"{overlay}: the model needs {bound / MiB:.0f} MiB"
    # The model was measured with these allocator settings.
    assert ALLOCATOR_ENV.items() <= env.items()
    # Not far above it either: the request is what the scheduler reserves on a node.
    assert request < bound + 128 * MiB
    assert limit >= request * 1.2


def test_default_settings_fit_the_base_request(monkeypatch: pytest.MonkeyPatch) -> None:
    # A consumer run without any memory setting (the defaults) fits the same request.
    container, _ = _consumer("dev")
    defaults = _settings({}, monkeypatch)
    assert memory_bound(defaults) <= quantity_bytes(container["resources"]["requests"]["memory"])


def test_docs_state_the_model_and_its_measured_factors() -> None:
    text = (REPO_ROOT / "docs" / "memory.md").read_text()
    terms = {name: value // MiB for name, value in memory_terms(Settings()).items()}
    assert f"{MODEL.base_bytes // MiB} MiB" in text
    assert f"{MODEL.inflight_factor:g}" in text
    assert f"{sum(terms.values())} MiB" in text
    assert "bench/results/memory.json" in text


@pytest.mark.parametrize(
    ("text", "expected"),
    [("1Gi", 1 << 30), ("1280Mi", 1280 * MiB), ("512M", 512_000_000), ("4096", 4096)],
)
def test_quantity_bytes(text: str, expected: int) -> None:
    assert quantity_bytes(text) == expected
