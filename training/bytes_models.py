"""Write the models that let Triton decode: ``preprocess`` and a ``<model>_bytes`` ensemble
for every model of its input size in the repository.

    python -m training.bytes_models --repo triton_repo [--size 224]

``preprocess`` runs the consumer's decode code with the consumer's default limits (the
consumer checks the same limits before it forwards anything); each bytes ensemble chains it
to a backbone or to the ``moderation`` ensemble, so promoting or rolling back heads (which
re-pins ``moderation``) needs nothing here. Run again after adding a model. Exits 1 with one
line when the repository cannot be read or written.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from consumer.errors import ConfigError
from consumer.imaging.decode import ImageLimits
from consumer.inference.ensemble import (
    BYTES_SUFFIX,
    PREPROCESS_MODEL,
    ModelConfig,
    bytes_ensemble_config,
    preprocess_config,
    read_config,
    render,
)
from consumer.runtime.settings import ImagingSettings

logger = logging.getLogger(__name__)

# Triton's Python backend loads <model>/1/model.py; the code lives in the consumer package,
# which the Triton image installs.
MODEL_SHIM = '''"""Triton's preprocess step; the code is consumer.inference.preprocess_model."""

from consumer.inference.preprocess_model import TritonPythonModel

__all__ = ["TritonPythonModel"]
'''


def write_bytes_models(repo: Path, size: int = 224) -> list[str]:
    """Write ``preprocess`` and the bytes ensembles; return the ensembles' names.

    Raises ConfigError when a model config cannot be read or a file cannot be written."""
    preprocess = preprocess_config(size, ImageLimits.from_settings(ImagingSettings()))
    _write(repo / PREPROCESS_MODEL, preprocess, MODEL_SHIM)
    written = []
    for target in _targets(repo, size):
        ensemble = bytes_ensemble_config(target, preprocess)
        _write(repo / ensemble.name, ensemble, None)
        written.append(str(ensemble.name))
    return written


def _targets(repo: Path, size: int) -> list[ModelConfig]:
    targets = []
    for path in sorted(repo.glob("*/config.pbtxt")):
        name = path.parent.name
        if name == PREPROCESS_MODEL or name.endswith(BYTES_SUFFIX) or name.startswith("."):
            continue
        config = read_config(path)
        inputs = list(config.input)
        if len(inputs) == 1 and list(inputs[0].dims) == [size, size, 3]:
            targets.append(config)
    return targets


def _write(folder: Path, config: ModelConfig, model_source: str | None) -> None:
    try:
        (folder / "1").mkdir(parents=True, exist_ok=True)
        (folder / "config.pbtxt").write_text(render(config))
        if model_source is not None:
            (folder / "1" / "model.py").write_text(model_source)
    except OSError as exc:
        raise ConfigError(f"cannot write {folder}: {exc}") from exc


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repo", type=Path, default=Path("triton_repo"))
    parser.add_argument("--size", type=int, default=224)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        written = write_bytes_models(args.repo, args.size)
    except ConfigError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 1
    logger.info("wrote %s and %s", PREPROCESS_MODEL, ", ".join(written) or "no bytes ensemble")
    return 0


if __name__ == "__main__":
    sys.exit(main())
