"""Where the repository's own files are, for tests that read them."""

from __future__ import annotations

from pathlib import Path


def _repo_root() -> Path:
    here = Path(__file__).resolve()
    for folder in here.parents:
        if (folder / "pyproject.toml").is_file():
            return folder
    raise RuntimeError(f"no pyproject.toml above {here}: run the tests from a clone")


REPO_ROOT = _repo_root()
TRITON_REPO = REPO_ROOT / "triton_repo"
DEFAULT_POLICY = REPO_ROOT / "policies" / "default.yaml"
DEPLOY = REPO_ROOT / "deploy"
SCHEMAS = REPO_ROOT / "schemas"
FIXTURES = REPO_ROOT / "tests" / "fixtures"
BENCH_RESULTS = REPO_ROOT / "bench" / "results"
