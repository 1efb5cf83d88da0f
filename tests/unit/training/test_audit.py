"""The label audit on small synthetic embeddings (no backbone): score definitions, planted
flips, grouped folds, re-weighting, the page and the command line's refusals."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from training.audit.cli import main
from training.audit.experiment import AuditSet, class_labels, flip_labels, listing, run_audit
from training.audit.oof import grouped_class_folds
from training.audit.page import write_page
from training.audit.scores import PoolScores, entropy, precision_at_k
from training.heads.fit import FitConfig

CLASSES = ("card", "qr", "none")


def synthetic(seed: int = 0, per_class: int = 40, dim: int = 16) -> AuditSet:
    """Two "backbones" that see the same classes through different noisy projections."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 1.5, (len(CLASSES), dim))
    labels = np.repeat(np.arange(len(CLASSES)), 2 * per_class)
    base = centres[labels] + rng.normal(0, 1, (len(labels), dim))
    embeddings = {
        name: (base @ rng.normal(0, 1, (dim, dim)) + rng.normal(0, 0.5, base.shape)).astype(
            np.float32
        )
        for name in ("a", "b")
    }
    splits = tuple("train" if i % 2 == 0 else "test" for i in range(len(labels)))
    return AuditSet(
        embeddings=embeddings,
        labels=labels.astype(np.int64),
        classes=CLASSES,
        splits=splits,
        groups=tuple(f"g{i % 17}" for i in range(len(labels))),
        references=tuple(f"img/<{i}>.jpg" for i in range(len(labels))),
    )


def test_scores_follow_their_definitions() -> None:
    sure = [1.0, 0.0, 0.0]
    other = [0.0, 1.0, 0.0]
    uniform = [1 / 3] * 3
    # Sample 0: both models sure and agree; 1: sure but disagree; 2: both uniform.
    probs = np.array([[sure, sure, uniform], [sure, other, uniform]])
    scores = PoolScores.of(probs, np.array([0, 0, 2]))
    assert scores.confusion_perplexity == pytest.approx([1.0, 1.0, 3.0])
    assert scores.total_entropy == pytest.approx([0.0, math.log(2), math.log(3)])
    assert scores.disagreement == pytest.approx([0.0, math.log(2), 0.0], abs=1e-9)
    assert scores.self_confidence == pytest.approx([1.0, 0.5, 1 / 3])
    assert scores.difficulty(3) == pytest.approx([0.0, 0.0, 1.0])
    assert entropy(np.array([0.5, 0.5])) == pytest.approx(math.log(2))
    with pytest.raises(ValueError, match="do not match"):
        PoolScores.of(probs, np.array([0]))


def test_flips_change_exactly_the_share_asked_and_never_keep_the_class() -> None:
    y = np.repeat(np.arange(3), 100).astype(np.int64)
    eligible = np.arange(300) < 200
    flipped, planted = flip_labels(y, eligible, 0.1, 3, seed=1)
    assert planted.sum() == 20
    assert not planted[~eligible].any()
    assert (flipped[planted] != y[planted]).all()
    assert (flipped[~planted] == y[~planted]).all()


def test_folds_keep_groups_together_and_cover_every_row() -> None:
    groups = [f"g{i % 7}" for i in range(70)]
    folds = grouped_class_folds(np.zeros(70, dtype=np.int64), groups, 5, seed=0)
    assert sorted(np.concatenate(folds).tolist()) == list(range(70))
    for held in folds:
        inside = {groups[i] for i in held}
        assert all(groups[i] not in inside for i in set(range(70)) - set(held.tolist()))
    assert grouped_class_folds(np.zeros(3, dtype=np.int64), ["one"] * 3, 5, seed=0) == []


def test_single_label_rows_become_classes_and_multi_label_rows_are_left_out() -> None:
    classes, y, single = class_labels([frozenset({"qr"}), frozenset(), frozenset({"qr", "a"})])
    assert classes == ("a", "qr", "none")
    assert y[:2].tolist() == [1, 2]
    assert single.tolist() == [True, True, False]


def test_the_audit_finds_planted_flips_far_above_chance() -> None:
    data = synthetic()
    result = run_audit(data, flip=0.1, seed=0, cfg=FitConfig(), draws=100)
    report = result.report
    assert report["planted"] == 12
    found = report["precision_at_k"]["suspicion"]["10"]
    assert found["low"] > 3 * report["chance"], found
    variants = report["reweighting"]["variants"]
    assert set(variants) >= {"uniform", "clean_labels", "one_minus_difficulty"}
    assert variants["uniform"]["accuracy_minus_uniform"]["value"] == 0.0
    top = listing(data, result, 5)
    assert [row["rank"] for row in top] == [1, 2, 3, 4, 5]
    assert all(row["given"] in CLASSES and row["suggested"] in CLASSES for row in top)
    assert precision_at_k(np.arange(4.0), np.array([0, 0, 1, 1], dtype=bool), 2)["value"] == 1.0


def test_the_page_escapes_every_text(tmp_path: Path) -> None:
    row = {
        "rank": 1,
        "image": "<script>alert(1)</script>.jpg",
        "given": "qr",
        "original": "none",
        "planted_flip": True,
        "suggested": "<b>none</b>",
        "self_confidence": 0.1,
        "confusion_perplexity": 1.5,
        "total_entropy": 0.7,
        "disagreement": 0.2,
    }
    page = tmp_path / "audit.html"
    write_page(page, [row], [b"not an image"], "summary & <note>")
    text = page.read_text()
    assert "<script>" not in text
    assert "&lt;script&gt;" in text
    assert "<b>none</b>" not in text
    assert "summary &amp; &lt;note&gt;" in text


@pytest.mark.parametrize("make", ["missing", "empty"])
def test_a_missing_or_empty_set_exits_2_with_one_line(
    make: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "set"
    if make == "empty":
        data.mkdir()
    assert main(["--data", str(data), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("python -m training.audit: ")
    assert err.count("\n") == 1


def test_repeats_keep_each_seeds_point_values() -> None:
    from training.audit.repeats import repeat

    found = repeat(synthetic(), [0, 1], flip=0.1, folds=5)
    suspicion = found["precision_at_k"]["suspicion"]["10"]
    assert len(suspicion["values"]) == 2
    assert suspicion["min"] <= suspicion["mean"] <= suspicion["max"]
    assert found["reweighting"]["uniform"]["accuracy_minus_uniform"]["max"] == 0.0
