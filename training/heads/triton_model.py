"""The heads model Triton serves: ``embedding`` in, every head's score and the version's
descriptor out. Copied as ``model.py`` into each version folder by ``training.heads.export``.

It runs in Triton's Python backend (here and in NVIDIA's image) and needs numpy alone: a
[B, 1280] x [1280, K] product is microseconds on any CPU, so the heads add nothing that would
need the GPU. One response per request; a malformed request gets an error response of its own.

A version refuses to load when the backbone beside it in the model repository is not the one
its heads were trained on (``backbone_sha256`` in ``heads.json`` against the backbone's
``modstream.backbone_sha256`` parameter).
"""

from __future__ import annotations

import json
import os
import re
from typing import Any

import numpy as np
import numpy.typing as npt

WEIGHTS_FILE = "heads.npz"
DESCRIPTOR_FILE = "heads.json"
_SHA_PARAMETER = re.compile(
    r'key:\s*"modstream\.backbone_sha256"\s*value:?\s*\{\s*string_value:\s*"([0-9a-f]+)"'
)


def score(
    embeddings: npt.NDArray[np.float32], weights: dict[str, npt.NDArray[Any]]
) -> npt.NDArray[np.float32]:
    """sigmoid(w · x + b) per head, on the unit embedding for cosine heads."""
    x = embeddings.astype(np.float32)
    unit = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    weight, bias, normalize = weights["weight"], weights["bias"], weights["normalize"]
    logits = np.where(normalize[None, :], unit @ weight, x @ weight) + bias[None, :]
    result: npt.NDArray[np.float32] = np.exp(-np.logaddexp(0.0, -logits)).astype(
        np.float32
    )  # sigmoid, overflow-free
    return result


def backbone_sha256(config_text: str) -> str | None:
    match = _SHA_PARAMETER.search(config_text)
    return match.group(1) if match else None


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        model_dir = args["model_repository"]
        version_dir = os.path.join(model_dir, args["model_version"])
        with open(os.path.join(version_dir, DESCRIPTOR_FILE), encoding="utf-8") as handle:
            text = handle.read()
        descriptor = json.loads(text)
        with np.load(os.path.join(version_dir, WEIGHTS_FILE)) as data:
            self.weights = {name: data[name] for name in ("weight", "bias", "normalize")}
        backbone_config = os.path.join(
            os.path.dirname(model_dir), descriptor["backbone"], "config.pbtxt"
        )
        served = None
        if os.path.isfile(backbone_config):
            with open(backbone_config, encoding="utf-8") as handle:
                served = backbone_sha256(handle.read())
        if served != descriptor["backbone_sha256"]:
            raise RuntimeError(
                f"heads version {args['model_version']} were trained on backbone "
                f"{descriptor['backbone']} sha256 {descriptor['backbone_sha256'][:12]}, but "
                f"the repository serves sha256 {(served or 'none')[:12]}: retrain the heads "
                "on the served backbone"
            )
        self.dim = int(self.weights["weight"].shape[0])
        self.descriptor = json.dumps(descriptor, separators=(",", ":")).encode()

    def execute(self, requests: list[Any]) -> list[Any]:
        import triton_python_backend_utils as pb_utils

        responses = []
        for request in requests:
            embeddings = pb_utils.get_input_tensor_by_name(request, "embedding").as_numpy()
            if embeddings.ndim != 2 or embeddings.shape[1] != self.dim:
                error = pb_utils.TritonError(
                    f"embedding must be [batch, {self.dim}], got {list(embeddings.shape)}"
                )
                responses.append(pb_utils.InferenceResponse(output_tensors=[], error=error))
                continue
            descriptor = np.full((len(embeddings), 1), self.descriptor, dtype=np.object_)
            responses.append(
                pb_utils.InferenceResponse(
                    output_tensors=[
                        pb_utils.Tensor("head_scores", score(embeddings, self.weights)),
                        pb_utils.Tensor("heads_descriptor", descriptor),
                    ]
                )
            )
        return responses
