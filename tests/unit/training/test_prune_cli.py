"""``python -m training.prune`` refuses bad input in one line, before loading anything."""

from __future__ import annotations

from pathlib import Path

import pytest

from training.prune.cli import main, pruned_name


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--ratio", "1.5"], "ratio 1.5 must be between 0 and 1"),
        (["--ratio", "0"], "ratio 0 must be between 0 and 1"),
        (["--ratio", "forty"], "ratio 'forty' is not a number"),
        (["--ratio", "0.4", "--minutes", "-1"], "-1 must be positive"),
        (["--ratio", "0.401", "0.4"], "two ratios round to the same model name"),
        (["--ratio", "0.4", "--batch", "0"], "--batch must be at least 1"),
    ],
)
def test_bad_input_exits_non_zero_with_one_line(
    args: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main([*args, "--out", str(tmp_path / "out"), "--repo", str(tmp_path / "repo")])

    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert message in err
    assert not (tmp_path / "repo").exists()


def test_missing_demo_set_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(
        [
            "--ratio",
            "0.2",
            "--out",
            str(tmp_path / "out"),
            "--repo",
            str(tmp_path / "repo"),
            "--demo-set",
            str(tmp_path / "nowhere"),
            "--policy",
            str(tmp_path / "missing.yaml"),
        ]
    )

    assert code == 1
    err = capsys.readouterr().err
    assert err.startswith("pruning failed: cannot read policy file")
    assert err.count("\n") == 1


def test_each_ratio_names_its_own_triton_model() -> None:
    assert pruned_name(0.2) == "mobilenet_v2_pruned20"
    assert pruned_name(0.4) == "mobilenet_v2_pruned40"
