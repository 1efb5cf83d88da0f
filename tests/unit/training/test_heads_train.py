"""Heads training on small synthetic embeddings (no backbone): kinds, selection, metrics,
learning curves, the report and the model card."""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
import torch

from consumer.cli import main as modstream
from consumer.moderation.heads import HeadCategory
from consumer.moderation.shadow_report import wilson
from training.heads import metrics, report
from training.heads.assemble import train_and_report
from training.heads.cli import TrainOptions
from training.heads.cli import main as heads_main
from training.heads.curves import learning_curves
from training.heads.fit import (
    KINDS,
    LOGISTIC,
    PROTOTYPE,
    PULLED,
    FitConfig,
    Standardizer,
    fit_logistic,
    fit_prototype,
    fit_pulled,
)
from training.heads.train import SELECTED, EmbeddedRows, grouped_folds, train_all, train_category

DIM = 24
OWNERS: dict[str, str | None] = {"qr": None, "contact": "marketplace", "card": "tickets"}


@pytest.fixture(autouse=True)
def _one_torch_thread() -> Iterator[None]:
    # As the trainer does (train.one_torch_thread), for the tests that call fits directly.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def synthetic(seed: int = 0, per_class: int = 60, test_per_class: int = 40) -> EmbeddedRows:
    """Non-negative embeddings (as after a ReLU): each category adds its own direction, with
    noise and an overlap so the heads are good but not perfect."""
    rng = np.random.default_rng(seed)
    directions = {name: np.abs(rng.normal(0, 1, DIM)) for name in OWNERS}
    rows, labels, tenants, splits, sources, groups = [], [], [], [], [], []
    for split, count in (("train", per_class), ("test", test_per_class)):
        kinds = [*[name for name in OWNERS for _ in range(count)], *["none"] * (2 * count)]
        for number, kind in enumerate(kinds):
            x = np.abs(rng.normal(0, 1, DIM))
            if kind != "none":
                x += rng.uniform(0.3, 1.2) * directions[kind]
            rows.append(x)
            labels.append(frozenset() if kind == "none" else frozenset({kind}))
            tenants.append(None if kind == "none" else OWNERS[kind])
            splits.append(split)
            photo = kind == "none" and number % 2 == 0
            sources.append(f"{split}/{'plain_photo' if photo else kind}-{number:04d}.jpg")
            groups.append(f"{split}-bg{number % 7}")
    return EmbeddedRows(
        embeddings=np.stack(rows).astype(np.float32),
        labels=tuple(labels),
        tenants=tuple(tenants),
        splits=tuple(splits),
        sources=tuple(sources),
        groups=tuple(groups),
    )


def train_part(
    data: EmbeddedRows, category: str
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.bool_]]:
    train = data.split("train")
    return data.embeddings[train], data.target(category)[train]


def sigmoid(z: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    result: npt.NDArray[np.float64] = 1.0 / (1.0 + np.exp(-z))
    return result


# ── the three kinds reduce to TrainedHeads ────────────────────────────────────────────────


def test_logistic_head_scores_the_raw_embedding_like_its_standardised_fit() -> None:
    data = synthetic()
    x, y = train_part(data, "contact")
    std = Standardizer.fit(x)
    head = fit_logistic(x, y, std, FitConfig())
    assert head.kind == LOGISTIC
    assert not head.normalize
    # The same weights, unfolded, give the same probabilities on standardised features.
    w, b = std.unfold(head)
    expected = sigmoid(std.apply(x) @ w + b)
    np.testing.assert_allclose(head.scores(x), expected, rtol=1e-4, atol=1e-5)
    assert (metrics.average_precision(y, head.scores(x)) or 0.0) > 0.9


def test_prototype_head_is_a_calibrated_cosine_to_the_positive_mean() -> None:
    data = synthetic()
    x, y = train_part(data, "card")
    head = fit_prototype(x, y, FitConfig())
    assert head.kind == PROTOTYPE
    assert head.normalize
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    prototype = unit[y].mean(axis=0)
    prototype /= np.linalg.norm(prototype)
    slope = float(np.linalg.norm(head.weight))
    np.testing.assert_allclose(head.weight / slope, prototype, atol=1e-5)
    expected = sigmoid(slope * (unit @ prototype) + head.bias)
    np.testing.assert_allclose(head.scores(x), expected, rtol=1e-4, atol=1e-5)
    # Calibrated: positives score higher than negatives on average, and the slope is positive.
    assert slope > 0
    assert head.scores(x)[y].mean() > head.scores(x)[~y].mean()


def test_pulled_head_starts_from_the_related_platform_head_and_stays_near_it() -> None:
    data = synthetic()
    x, y = train_part(data, "contact")
    std = Standardizer.fit(x)
    platform = {"qr": fit_logistic(*train_part(data, "qr"), std, FitConfig())}
    strong = fit_pulled(x, y, std, FitConfig(pull=100.0), platform)
    weak = fit_pulled(x, y, std, FitConfig(pull=1e-3), platform)
    assert strong.kind == PULLED
    assert strong.init == "qr"
    start, _ = std.unfold(platform["qr"])
    distance = [float(np.linalg.norm(std.unfold(h)[0] - start)) for h in (strong, weak)]
    assert distance[0] < distance[1]
    # Without a platform head it starts from the logistic fit on its own labels.
    assert (fit_pulled(x, y, std, FitConfig(), {}).init or "").startswith(LOGISTIC)


def test_trained_heads_score_like_each_head() -> None:
    data = synthetic()
    trained = train_all(data, FitConfig())
    heads = trained.trained_heads("nsfw_mobilenet_v2", "a" * 64)
    assert heads.categories == (
        HeadCategory(name="qr"),
        HeadCategory(name="contact", tenant="marketplace"),
        HeadCategory(name="card", tenant="tickets"),
    )
    assert heads.weight.shape == (DIM, 3)
    scores = heads.scores(data.embeddings)
    for k, head in enumerate(trained.heads):
        np.testing.assert_allclose(scores[:, k], head.head.scores(data.embeddings), atol=1e-6)
    assert trained.heads[0].selection.kind == LOGISTIC
    assert set(trained.heads[1].selection.cv_pr_auc) == set(KINDS)


def test_each_kind_can_be_chosen_and_served() -> None:
    data = synthetic()
    x, y = train_part(data, "card")
    std = Standardizer.fit(x)
    groups = [g for g, s in zip(data.groups, data.splits, strict=True) if s == "train"]
    for kind in KINDS:
        candidates = {
            kind: {
                LOGISTIC: lambda a, b: fit_logistic(a, b, std, FitConfig()),
                PROTOTYPE: lambda a, b: fit_prototype(a, b, FitConfig()),
                PULLED: lambda a, b: fit_pulled(a, b, std, FitConfig(), {}),
            }[kind]
        }
        chosen = train_category(
            HeadCategory(name="card", tenant="tickets"), x, y, groups, candidates, FitConfig()
        )
        assert chosen.head.kind == kind
        assert 0.0 < chosen.review_threshold <= 1.0
        if chosen.block_threshold is not None:
            assert chosen.review_threshold <= chosen.block_threshold <= 1.0


# ── selection never sees the test split ───────────────────────────────────────────────────


def test_selection_and_thresholds_depend_on_the_train_split_only() -> None:
    data = synthetic()
    test = data.split("test")
    rng = np.random.default_rng(7)
    # Scramble everything about the test rows: their embeddings, and their labels (with the
    # owners that go with them).
    order = np.arange(len(test))
    order[test] = rng.permutation(order[test])
    scrambled = replace(
        data,
        embeddings=np.where(
            test[:, None], rng.permutation(data.embeddings), data.embeddings
        ).astype(np.float32),
        labels=tuple(data.labels[i] for i in order),
        tenants=tuple(data.tenants[i] for i in order),
    )
    assert scrambled.labels != data.labels
    first, second = train_all(data, FitConfig()), train_all(scrambled, FitConfig())
    for a, b in zip(first.heads, second.heads, strict=True):
        assert a.selection.kind == b.selection.kind
        assert a.selection.cv_pr_auc == b.selection.cv_pr_auc
        assert a.review_threshold == b.review_threshold
        assert a.block_threshold == b.block_threshold
        np.testing.assert_array_equal(a.head.weight, b.head.weight)


def test_folds_keep_groups_together_and_hold_both_classes() -> None:
    y = np.array([True, False] * 30)
    groups = [f"g{i % 9}" for i in range(60)]
    folds = grouped_folds(y, groups, 5, seed=0)
    assert len(folds) == 5
    held = np.concatenate(folds)
    assert sorted(held.tolist()) == list(range(60))
    for fold in folds:
        inside = {groups[i] for i in fold}
        outside = {groups[i] for i in set(range(60)) - set(fold.tolist())}
        assert not inside & outside
        assert y[fold].any()
        assert not y[fold].all()
    # One group holds everything: nothing to cross-validate.
    assert grouped_folds(y, ["one"] * 60, 5, seed=0) == []


# ── metrics ───────────────────────────────────────────────────────────────────────────────


@pytest.mark.parametrize(
    ("k", "n", "low", "high"),
    [
        # The roots of (k/n - p)² n = z² p(1 - p), solved independently (numpy.roots).
        (5, 10, 0.236593, 0.763407),
        (0, 10, 0.0, 0.277533),
        (10, 10, 0.722467, 1.0),
        (1, 10, 0.017876, 0.404150),
        (81, 263, 0.255289, 0.366210),
    ],
)
def test_wilson_interval_matches_known_values(k: int, n: int, low: float, high: float) -> None:
    interval = wilson(k, n)
    assert interval is not None
    assert interval[0] == pytest.approx(low, abs=1e-5)
    assert interval[1] == pytest.approx(high, abs=1e-5)


def test_wilson_interval_without_trials_is_none() -> None:
    assert wilson(0, 0) is None
    assert metrics.proportion(0, 0).value is None


def test_average_precision_matches_the_step_definition() -> None:
    y = np.array([False, False, True, True])
    assert metrics.average_precision(y, np.array([0.1, 0.4, 0.35, 0.8])) == pytest.approx(5 / 6)
    # Tied scores are flagged together: AP is the prevalence.
    assert metrics.average_precision(y, np.full(4, 0.5)) == pytest.approx(0.5)
    assert metrics.average_precision(np.zeros(3, dtype=bool), np.ones(3)) is None


def test_no_block_threshold_measures_nothing_at_block() -> None:
    y = np.array([True, False, True, False])
    s = np.array([0.9, 0.8, 0.3, 0.2])
    benign = np.array([False, True, False, True])
    found = metrics.evaluate(
        y, s, review_threshold=0.3, block_threshold=None, benign=benign, draws=20
    )
    assert found["at_block"] is None
    assert found["benign_fpr_at_block"] is None
    blocking = metrics.evaluate(
        y, s, review_threshold=0.3, block_threshold=0.8, benign=benign, draws=20
    )
    assert blocking["benign_fpr_at_block"]["k"] == 1
    assert blocking["benign_fpr_at_block"]["n"] == 2
    assert blocking["at_block"]["precision"]["value"] == pytest.approx(0.5)


def test_thresholds_from_scores() -> None:
    y = np.array([False, False, False, True, False, True, True, True])
    s = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8])
    assert metrics.best_f1_threshold(y, s) == pytest.approx(0.4)
    assert metrics.precision_threshold(y, s, 0.95) == pytest.approx(0.6)
    assert metrics.precision_threshold(~y, s, 0.95) is None


def test_bootstrap_interval_is_seeded_and_brackets_the_value() -> None:
    rng = np.random.default_rng(0)
    y = rng.random(300) < 0.3
    s = np.where(y, rng.normal(0.7, 0.2, 300), rng.normal(0.4, 0.2, 300))
    first = metrics.bootstrapped(metrics.average_precision, y, s, draws=200, seed=3)
    again = metrics.bootstrapped(metrics.average_precision, y, s, draws=200, seed=3)
    assert first == again
    assert first.low is not None
    assert first.high is not None
    assert first.value is not None
    assert first.low < first.value < first.high


# ── learning curves ───────────────────────────────────────────────────────────────────────


def test_learning_curves_have_a_point_per_size_kind_and_draw() -> None:
    data = synthetic(per_class=25)
    trained = train_all(data, FitConfig())
    curves = learning_curves(data, trained, FitConfig(), sizes=(5, 50), draws=2)
    assert set(curves.points) == {"qr", "card", "contact"}
    for points in curves.points.values():
        # 50 labels per class is more than the 25 positives there are: no point.
        assert {(p.labels_per_class, p.kind) for p in points} == {
            (5, kind) for kind in (*KINDS, SELECTED)
        }
        for point in points:
            assert len(point.pr_auc) == 2
            assert all(0.0 <= v <= 1.0 for v in point.pr_auc)


# ── the report and the model card ─────────────────────────────────────────────────────────


@pytest.fixture(scope="module")
def built() -> dict[str, object]:
    options = TrainOptions(
        data=Path("synthetic"), sizes=(5,), draws=2, bootstrap_draws=100, progress=False
    )
    dataset = {
        "name": "synthetic",
        "images": {"train": 240, "test": 160},
        "held_out_in_test": {"backgrounds": ["photo:chelsea"]},
        "synthetic": True,
    }
    found, heads = train_and_report(
        synthetic(),
        options,
        backbone={"name": "nsfw_mobilenet_v2", "sha256": "b" * 64},
        dataset=dataset,
    )
    assert heads.summary["qr.f1"] == found["categories"]["qr"]["test"]["at_review"]["f1"]["value"]
    found["timings"]["embedding"] = {"seconds_per_image": 0.01}
    return found


def test_report_has_the_documented_keys(built: dict[str, object], tmp_path: Path) -> None:
    path = report.write_json(built, tmp_path)
    loaded = json.loads(path.read_text())
    assert tuple(loaded) == report.REPORT_KEYS
    for entry in loaded["categories"].values():
        assert {"tenant", "head", "cv_pr_auc", "review_threshold", "block_threshold"} <= set(entry)
        test = entry["test"]
        estimates = [
            test["at_review"]["precision"],
            test["at_review"]["recall"],
            test["at_review"]["f1"],
            test["pr_auc"],
        ]
        # Without a block threshold there is nothing measured at block.
        assert (entry["block_threshold"] is None) == (test["benign_fpr_at_block"] is None)
        if test["benign_fpr_at_block"] is not None:
            estimates += [test["benign_fpr_at_block"], test["at_block"]["precision"]]
        for estimate in estimates:
            assert {"value", "low", "high"} <= set(estimate)
            assert estimate["low"] <= estimate["value"] <= estimate["high"]
    timing = loaded["timings"]["tenant_training"]
    assert timing["labels_per_class"] == 100
    # 60 training positives per category: fewer than the benchmark's 100 labels per class.
    assert timing["categories"] == []
    assert timing["met"] is None
    assert "not measured" in report.tenant_timing_sentence(loaded)
    assert loaded["learning_curves"]["labels_per_class"] == [5]
    report.plot_pr(loaded, tmp_path / report.PR_PLOT)
    report.plot_learning(loaded, tmp_path / report.LEARNING_PLOT)
    assert (tmp_path / report.PR_PLOT).read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / report.LEARNING_PLOT).read_bytes()[:4] == b"\x89PNG"


def test_model_card_block_is_regenerated_between_markers(
    built: dict[str, object], tmp_path: Path
) -> None:
    card = tmp_path / "README.md"
    card.write_text("# Models\n\nHand-written text.\n")
    block = report.card_block(built, "bench/results/heads.json")
    assert report.update_model_card(card, block)
    text = card.read_text()
    assert text.startswith("# Models\n\nHand-written text.\n\n" + report.CARD_BEGIN)
    assert text.endswith(report.CARD_END + "\n")
    assert "| qr | platform | logistic |" in text
    assert "synthetic" in text.lower()
    # Idempotent: the same report changes nothing.
    assert not report.update_model_card(card, block)
    assert card.read_text() == text
    # A new report replaces the block only; text after the block stays.
    card.write_text(text + "\nAfter.\n")
    assert report.update_model_card(card, block.replace("Heads on this backbone", "Changed"))
    updated = card.read_text()
    assert updated.startswith("# Models\n\nHand-written text.\n")
    assert updated.endswith(report.CARD_END + "\n\nAfter.\n")
    assert updated.count(report.CARD_BEGIN) == 1
    assert "Changed" in updated


def test_report_command_redraws_from_the_json_alone(
    built: dict[str, object], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = report.write_json(built, tmp_path / "results")
    card = tmp_path / "README.md"
    card.write_text("# Models\n")
    assert heads_main(["report", "--json", str(path), "--card", str(card)]) == 0
    assert report.CARD_BEGIN in card.read_text()
    assert (tmp_path / "results" / report.LEARNING_PLOT).is_file()
    first = card.read_text()
    assert heads_main(["report", "--json", str(path), "--card", str(card)]) == 0
    assert card.read_text() == first
    capsys.readouterr()

    (tmp_path / "bad.json").write_text("{}")
    assert heads_main(["report", "--json", str(tmp_path / "bad.json")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("python -m training.heads: ")
    assert err.count("\n") == 1


# ── the command line without the training extra ──────────────────────────────────────────


def test_train_heads_without_training_exits_2_with_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    for name in [name for name in sys.modules if name.startswith("training.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "training", None)
    assert modstream(["train", "heads", "--data", str(tmp_path)]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("modstream: train heads needs the training extra")
    assert captured.err.count("\n") == 1
    assert captured.out == ""


def test_nan_free_curve_summary() -> None:
    summary = report.curve_summary([0.5, math.nan, 0.7])
    assert summary["mean"] == pytest.approx(0.6)
    assert summary["values"] == [0.5, 0.7]
