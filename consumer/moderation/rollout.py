"""Promote and roll back heads versions on a running Triton, without interrupting it.

Every version of the heads model stays loaded (``version_policy: all``); which one the
``moderation`` ensemble uses is one field of the ensemble's config. Promotion reloads the
ensemble with that field changed — Triton loads the new ensemble before it retires the old
one, so requests keep being answered — after checking the candidate: it is loaded, it was
trained on the served backbone, and the policies can take its categories. Writing the same
config into the model repository (``--repo``) makes the choice survive a Triton restart.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from consumer.errors import ConfigError, InferenceUnavailable
from consumer.inference import ensemble
from consumer.moderation.heads import (
    BACKBONE_MODEL_PARAMETER,
    BACKBONE_SHA_PARAMETER,
    HEAD_SCORES_OUTPUT,
    HEADS_DESCRIPTOR_OUTPUT,
    HEADS_MODEL_PARAMETER,
    HeadsDescriptor,
)
from consumer.moderation.policy import ModelCategories, PolicySet

logger = logging.getLogger(__name__)


class RolloutError(ConfigError):
    """A heads version cannot be promoted as asked."""


@dataclass(frozen=True)
class HeadsStatus:
    ensemble: str
    live: str | None
    previous: str | None
    versions: dict[str, HeadsDescriptor | str]
    """Every version Triton knows: its descriptor when READY, else its state."""


class HeadsRollout:
    """Model-control operations on the heads behind one ensemble."""

    def __init__(self, url: str, ensemble_name: str = "moderation") -> None:
        self._client = grpcclient.InferenceServerClient(url=url)
        self._url = url
        self._ensemble = ensemble_name

    def close(self) -> None:
        self._client.close()

    def ensemble_config(self) -> ensemble.ModelConfig:
        try:
            raw = self._client.get_model_config(self._ensemble, as_json=True)["config"]
        except InferenceServerException as exc:
            raise RolloutError(
                f"cannot read ensemble {self._ensemble!r} from Triton at {self._url}: "
                f"{exc.message()}; is it loaded?"
            ) from exc
        return ensemble.from_json(json.dumps(raw))

    def status(self) -> HeadsStatus:
        config = self.ensemble_config()
        heads_model = config.parameters[HEADS_MODEL_PARAMETER].string_value
        versions: dict[str, HeadsDescriptor | str] = {}
        for entry in self._client.get_model_repository_index(as_json=True).get("models", []):
            if entry.get("name") != heads_model or "version" not in entry:
                continue
            version, state = str(entry["version"]), str(entry.get("state", "UNKNOWN"))
            versions[version] = self.describe(heads_model, version) if state == "READY" else state
        return HeadsStatus(
            ensemble=self._ensemble,
            live=ensemble.live_version(config),
            previous=ensemble.previous_version(config),
            versions=dict(sorted(versions.items(), key=lambda kv: int(kv[0]))),
        )

    def describe(self, heads_model: str, version: str) -> HeadsDescriptor:
        """Ask one loaded heads version for its descriptor (one blank embedding)."""
        try:
            config = self._client.get_model_config(heads_model, version, as_json=True)["config"]
            dim = int(config["input"][0]["dims"][0])
            tensor = grpcclient.InferInput("embedding", [1, dim], "FP32")
            tensor.set_data_from_numpy(np.zeros((1, dim), dtype=np.float32))
            result = self._client.infer(
                heads_model,
                [tensor],
                model_version=version,
                outputs=[
                    grpcclient.InferRequestedOutput(HEADS_DESCRIPTOR_OUTPUT),
                    grpcclient.InferRequestedOutput(HEAD_SCORES_OUTPUT),
                ],
            )
        except InferenceServerException as exc:
            raise RolloutError(
                f"heads {heads_model} version {version} does not answer: {exc.message()}; "
                "is it in the model repository and loaded?"
            ) from exc
        raw = result.as_numpy(HEADS_DESCRIPTOR_OUTPUT)
        return HeadsDescriptor.model_validate_json(bytes(raw.reshape(-1)[0]))

    def load(self) -> HeadsStatus:
        """Have Triton load version folders added to the repository since its last load (the
        live version keeps serving); the status afterwards."""
        config = self.ensemble_config()
        self._load(config.parameters[HEADS_MODEL_PARAMETER].string_value)
        return self.status()

    def live_categories(self) -> ModelCategories:
        """What the ensemble serves now (backbone classes and the live heads)."""
        config = self.ensemble_config()
        live = ensemble.live_version(config)
        if live is None:
            raise RolloutError(f"ensemble {self._ensemble} records no live heads version")
        heads_model = config.parameters[HEADS_MODEL_PARAMETER].string_value
        return model_categories(config, self.describe(heads_model, live))

    def promote(
        self, version: str, policies: PolicySet | None = None, repo: Path | None = None
    ) -> HeadsDescriptor:
        """Make ``version`` the live heads version; returns its descriptor.

        Raises RolloutError when it is not loaded, was trained on another backbone, or the
        policies name categories it cannot serve; nothing changes then.
        """
        config = self.ensemble_config()
        heads_model = config.parameters[HEADS_MODEL_PARAMETER].string_value
        self._load(heads_model)  # picks up version folders added since the last load
        descriptor = self.describe(heads_model, version)
        served_sha = self._served_backbone_sha(config)
        try:
            descriptor.check_backbone(served_sha or None)
            if policies is not None:
                policies.check_model(model_categories(config, descriptor))
        except ConfigError as exc:
            raise RolloutError(f"not promoting version {version}: {exc}") from exc
        pinned = ensemble.pin(config, version)
        self._load(self._ensemble, ensemble.as_json(pinned))
        if repo is not None:
            (repo / self._ensemble / "config.pbtxt").write_text(ensemble.render(pinned))
        logger.info("heads version %s is live on %s", version, self._ensemble)
        return descriptor

    def rollback(
        self, policies: PolicySet | None = None, repo: Path | None = None
    ) -> HeadsDescriptor:
        previous = ensemble.previous_version(self.ensemble_config())
        if previous is None:
            raise RolloutError("no earlier heads version is recorded to roll back to")
        return self.promote(previous, policies, repo)

    def _served_backbone_sha(self, config: ensemble.ModelConfig) -> str:
        """The hash in the backbone's own config: the ensemble's copy may predate a backbone
        re-export."""
        backbone = config.parameters[BACKBONE_MODEL_PARAMETER].string_value
        try:
            raw = self._client.get_model_config(backbone, as_json=True)["config"]
        except InferenceServerException as exc:
            raise RolloutError(f"cannot read backbone {backbone!r}: {exc.message()}") from exc
        served = ensemble.from_json(json.dumps(raw))
        return str(served.parameters[BACKBONE_SHA_PARAMETER].string_value)

    def _load(self, model: str, config: str | None = None) -> None:
        try:
            self._client.load_model(model, config=config)
        except InferenceServerException as exc:
            raise InferenceUnavailable(
                f"Triton at {self._url} did not load {model}: {exc.message()}; Triton needs "
                "--model-control-mode=explicit for heads rollouts"
            ) from exc


def model_categories(config: ensemble.ModelConfig, heads: HeadsDescriptor) -> ModelCategories:
    """What an ensemble with ``heads`` lets policies name."""

    def names(key: str) -> tuple[str, ...]:
        return tuple(n for n in config.parameters[key].string_value.split(",") if n)

    return ModelCategories(
        names("modstream.class_names"),
        names("modstream.prototype_categories"),
        {h.name: h.tenant for h in heads.categories},
    )
