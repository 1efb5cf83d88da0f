"""``modstream demo`` and ``modstream bench`` outside a clone, where ``bench`` is not installed."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest

from consumer.cli import main


@pytest.fixture
def without_bench(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make ``bench`` unimportable, as in the service image."""
    # Submodules already imported by other tests would be found in sys.modules without their
    # parent being looked up again.
    for name in [name for name in sys.modules if name.startswith("bench.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "bench", None)


@pytest.mark.usefixtures("without_bench")
@pytest.mark.parametrize(
    "argv",
    [["bench", "--events", "2", "--megapixels", "0.1"], ["demo", "--duration", "1", "--headless"]],
    ids=["bench", "demo"],
)
def test_dev_command_without_bench_exits_2_with_one_line(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.err == (
        f"modstream: {argv[0]} runs from a clone of the repository "
        "(the bench package is not installed here)\n"
    )
    assert captured.out == ""


@pytest.mark.usefixtures("without_bench")
def test_service_commands_do_not_need_bench(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["schema", "--out", str(tmp_path)]) == 0
    assert "image_event.schema.json" in capsys.readouterr().out


def test_a_training_step_gets_every_argument_after_its_name(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen: list[list[str]] = []

    def step_main(argv: list[str]) -> int:
        seen.append(argv)
        return 3

    step = types.ModuleType("training.prune.cli")
    step.main = step_main  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "training.prune.cli", step)
    assert main(["train", "prune", "--help"]) == 3
    assert main(["train", "prune", "--ratio", "0.2", "0.4"]) == 3
    assert seen == [["--help"], ["--ratio", "0.2", "0.4"]]
