"""The house keeps its shape: small service modules, a thin engine, no file found by walking
up from ``__file__``."""

from __future__ import annotations

import re

from tests.support.paths import REPO_ROOT

SERVICE = REPO_ROOT / "consumer"
MAX_MODULE_LINES = 400
MAX_ENGINE_LINES = 300


def test_no_service_module_is_over_the_limit() -> None:
    long = {
        str(path.relative_to(REPO_ROOT)): lines
        for path in SERVICE.rglob("*.py")
        if (lines := len(path.read_text().splitlines())) > MAX_MODULE_LINES
    }
    assert long == {}, f"split these modules (at most {MAX_MODULE_LINES} lines): {long}"


def test_the_engine_only_orchestrates() -> None:
    engine = SERVICE / "pipeline" / "engine.py"
    assert len(engine.read_text().splitlines()) <= MAX_ENGINE_LINES
    # Kafka, Pillow and Triton stay behind the engine's collaborators.
    imports = re.findall(r"^(?:from|import) (\S+)", engine.read_text(), re.MULTILINE)
    assert not [m for m in imports if m.split(".")[0] in {"PIL", "tritonclient", "httpx"}]
    assert "aiokafka.errors" not in imports


def test_nothing_finds_files_by_walking_up_from_its_own_path() -> None:
    walking = re.compile(r"__file__\)?(\.resolve\(\))?\.parents?\b")
    offenders = [
        str(path.relative_to(REPO_ROOT))
        for folder in ("consumer", "bench", "training")
        for path in (REPO_ROOT / folder).rglob("*.py")
        if walking.search(path.read_text())
    ]
    assert offenders == []
