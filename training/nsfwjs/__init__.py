"""Import the pretrained nsfwjs@4.4.0 networks exactly into PyTorch.

``load("mobilenet_v2" | "mobilenet_v2_mid" | "inception_v3")`` fetches the pinned npm tarball
(``npm pack``, sha256-checked, cached under ``<repo>/.cache/nsfwjs``), reads the TensorFlow.js
artifacts without running JavaScript, and rebuilds the network with TensorFlow's numerics
(``SAME`` padding, batch-norm epsilon, uint8 dequantization).
"""

from __future__ import annotations

from training.nsfwjs.errors import ImportFailed
from training.nsfwjs.models import (
    CLASS_NAMES,
    MODELS,
    NsfwModel,
    PretrainedConfig,
    Uint8NsfwModel,
    get_config,
    load,
    preprocess,
)

__all__ = [
    "CLASS_NAMES",
    "MODELS",
    "ImportFailed",
    "NsfwModel",
    "PretrainedConfig",
    "Uint8NsfwModel",
    "get_config",
    "load",
    "preprocess",
]
