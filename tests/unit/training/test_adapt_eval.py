"""The adaptation's judges: the linear probe, the drift bound and the command line's refusals."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.support.paths import REPO_ROOT
from training.adapt import cli, drift, probe

POLICY = REPO_ROOT / "policies" / "default.yaml"


def test_the_drift_bound_is_half_the_finest_threshold_gap_of_the_shipped_policy() -> None:
    policies = drift.policy_thresholds(POLICY)
    assert {"default", "kids-app", "art-gallery"} <= set(policies)
    assert policies["kids-app"]["sexual_explicit"] == {"review": 0.10, "block": 0.30}
    assert drift.threshold_gap(policies) == pytest.approx(0.10)


def test_an_action_change_fails_drift_even_within_the_bound() -> None:
    thresholds = drift.policy_thresholds(POLICY)["default"]
    assert drift.action({"sexual_explicit": 0.41}, thresholds) == "review"
    assert drift.action({"sexual_explicit": 0.39}, thresholds) == "allow"
    assert drift.action({"sexual_explicit": 0.80}, thresholds) == "block"
    found = {"max_abs_delta": 0.02, "top_class_changes": [], "action_changes": ["x: a -> b"]}
    ok, why = drift.within(found, 0.05)
    assert not ok
    assert "action changed" in why
    assert drift.within({**found, "action_changes": []}, 0.05)[0]
    assert not drift.within({**found, "action_changes": [], "max_abs_delta": 0.06}, 0.05)[0]


def test_the_probe_separates_separable_classes_and_a_model_does_not_beat_itself() -> None:
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(3, 16)) * 4
    labels = np.repeat(np.arange(3), 30)
    train = (centres[labels] + rng.normal(size=(90, 16))).astype(np.float32)
    test = (centres[labels] + rng.normal(size=(90, 16))).astype(np.float32)
    scores = probe.fit_predict(train, labels, test, 3)
    found = probe.evaluate(labels, scores, 2)
    assert found["accuracy"]["value"] > 0.95
    assert found["macro_pr_auc"]["low"] <= found["macro_pr_auc"]["value"] + 1e-9 <= 1.0 + 1e-9
    same = probe.paired_difference(labels, scores, scores, 2)
    assert same["macro_pr_auc"] == {"value": 0.0, "low": 0.0, "high": 0.0}


def test_bad_input_exits_2_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["--data", str(tmp_path / "missing"), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("adaptation failed:")
    assert err.count("\n") == 1
    assert cli.main(["--data", str(tmp_path), "--steps", "0"]) == 2
