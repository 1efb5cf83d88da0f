"""``python -m training.feedback``: bad input ends with exit 2 and one line naming it."""

from __future__ import annotations

from pathlib import Path

import pytest

from consumer.cli import main as modstream
from training.feedback.cli import main


def test_an_unreachable_broker_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status = main(
        ["build", "--out", str(tmp_path / "set"), "--bootstrap", "127.0.0.1:1", "--timeout", "2"]
    )
    assert status == 2
    # aiokafka logs its connection errors first; the command's own reason is the last line.
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("python -m training.feedback build: cannot reach Kafka at 127.0.0.1:1")
    assert not (tmp_path / "set").exists()


def test_a_missing_base_set_is_refused_before_training(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status = main(
        ["retrain", "--data", str(tmp_path), "--with", str(tmp_path / "nope"), "--out", "x"]
    )
    assert status == 2
    assert f"base set {tmp_path / 'nope'} does not exist" in capsys.readouterr().err


def test_an_empty_set_cannot_be_audited(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "manifest.jsonl").write_text("")
    status = main(["audit", "--data", str(tmp_path), "--out", str(tmp_path / "audit")])
    assert status == 2
    assert "no labelled images" in capsys.readouterr().err


def test_modstream_train_feedback_runs_the_step(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        modstream(["train", "feedback", "--help"])
    assert exit_info.value.code == 0
    assert "python -m training.feedback" in capsys.readouterr().out
