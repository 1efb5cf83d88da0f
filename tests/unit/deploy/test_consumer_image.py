"""The consumer image ships the service (and its review page) only: no benchmark, demo,
launcher or sample code.

The test builds the wheel from exactly what the Dockerfile copies into its build stage and
lists what it would install.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from tests.support.paths import DEPLOY, REPO_ROOT

DOCKERFILE = DEPLOY / "docker" / "consumer.Dockerfile"
DEV_ONLY = re.compile(r"(^|/)(bench|training|tests|local|samples)/|demo|benchmark|audit|tansu")


def _build_stage_copies() -> list[str]:
    build_stage = re.split(r"^FROM ", DOCKERFILE.read_text(), flags=re.MULTILINE)[1]
    sources: list[str] = []
    for line in build_stage.splitlines():
        if line.startswith("COPY ") and "--from" not in line:
            sources.extend(line.split()[1:-1])
    return sources


def test_the_build_stage_copies_only_the_service_package() -> None:
    assert sorted(_build_stage_copies()) == ["README.md", "consumer", "pyproject.toml"]


def test_the_installed_service_has_no_development_code(tmp_path: Path) -> None:
    context = tmp_path / "context"
    context.mkdir()
    for source in _build_stage_copies():
        origin = REPO_ROOT / source
        if origin.is_dir():
            shutil.copytree(origin, context / source, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(origin, context / source)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
         "--wheel-dir", str(tmp_path / "wheel"), str(context)],
        check=True,
        capture_output=True,
    )  # fmt: skip
    (wheel,) = (tmp_path / "wheel").glob("modstream-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    modules = [n for n in names if n.endswith(".py")]
    assert "consumer/pipeline/engine.py" in modules
    assert "consumer/cli.py" in modules
    # `modstream review` runs from the same image: its templates travel with the package.
    assert any(n.startswith("consumer/review/templates/") for n in names)
    assert [n for n in names if DEV_ONLY.search(n)] == []
    assert not [n for n in names if n.endswith((".png", ".jpg"))]
