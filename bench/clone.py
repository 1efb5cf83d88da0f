"""The modstream clone the development tools run in (found from the working directory)."""

from __future__ import annotations

from pathlib import Path

from consumer.errors import ConfigError


def clone_root(start: Path | None = None) -> Path:
    """The nearest folder at or above ``start`` (default: the working directory) that holds
    modstream's ``pyproject.toml`` and ``triton_repo/``.

    Raises ConfigError when there is none: the demo, benchmarks and training tools work on a
    clone, not on an installed service.
    """
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "pyproject.toml").is_file() and (folder / "triton_repo").is_dir():
            return folder
    raise ConfigError(
        f"no modstream clone at or above {here}: run this from a clone of the repository "
        "(the folder with pyproject.toml and triton_repo/)"
    )
