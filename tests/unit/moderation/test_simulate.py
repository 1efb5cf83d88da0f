"""Policy simulation: actions per tenant, precision/recall, a threshold sweep and its plot."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from consumer.cli import main
from consumer.moderation.policy import TopicRoutes, compile_policy, parse_policy
from consumer.moderation.simulate import best_f1, read_events, simulate, sweep_block

POLICY = """
default:
  thresholds:
    sexual_explicit: {review: 0.4, block: 0.8}
tenants:
  kids-app:
    thresholds:
      sexual_explicit: {review: 0.1, block: 0.3}
"""


def _events(path: Path) -> Path:
    rows = []
    for tenant in ("acme", "kids-app"):
        for score, label in (
            (0.05, "allow"),
            (0.2, "allow"),
            (0.5, "review"),
            (0.6, "block"),
            (0.9, "block"),
        ):
            rows.append(
                {
                    "tenant_id": tenant,
                    "scores": {"sexual_explicit": score, "safe": 1 - score},
                    "label": label,
                }
            )
    # A decision read back from a topic works as it is (extra fields are ignored).
    rows.append(
        {
            "event_id": "x",
            "tenant_id": "acme",
            "action": "allow",
            "scores": {"sexual_explicit": 0.0},
        }
    )
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def test_distribution_and_precision_recall(tmp_path: Path) -> None:
    policies = compile_policy(parse_policy(POLICY, "test"), TopicRoutes("a", "r", "b"))
    result = simulate(policies, read_events(_events(tmp_path / "events.jsonl")))

    assert dict(result.by_tenant["acme"]) == {"allow": 3, "review": 2, "block": 1}
    assert dict(result.by_tenant["kids-app"]) == {"allow": 1, "review": 1, "block": 3}
    precision, recall = result.precision_recall()["block"]
    assert precision == pytest.approx(3 / 4)  # kids-app blocks the 0.5 "review" one too
    assert recall == pytest.approx(3 / 4)  # acme's 0.6 "block" is only reviewed


def test_sweep_finds_the_threshold_that_separates_the_labels(tmp_path: Path) -> None:
    policies = compile_policy(parse_policy(POLICY, "test"), TopicRoutes("a", "r", "b"))
    events = read_events(_events(tmp_path / "events.jsonl"))
    points = sweep_block(policies, events, "sexual_explicit")

    assert len(points) == 101
    assert points[0].recall == 1.0
    assert points[-1].recall in (0.0, None)
    best = best_f1(points)
    assert best is not None
    assert 0.5 < best.threshold <= 0.6
    assert best.precision == best.recall == 1.0


def test_cli_prints_writes_the_plot_and_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    plot, report = tmp_path / "sweep.png", tmp_path / "report.json"
    code = main(
        [
            "policy",
            "simulate",
            "--policy",
            str(policy),
            "--events",
            str(_events(tmp_path / "e.jsonl")),
            "--sweep",
            "sexual_explicit",
            "--plot",
            str(plot),
            "--json",
            str(report),
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "kids-app" in out
    assert "best F1" in out
    with Image.open(plot) as image:
        assert image.size == (640, 400)
    assert json.loads(report.read_text())["by_tenant"]["acme"]["block"] == 1


def test_bad_events_file_exits_2_naming_the_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    events = tmp_path / "bad.jsonl"
    events.write_text('{"tenant_id": "acme", "scores": {}}\n{"tenant_id": "acme"}\n')
    assert main(["policy", "simulate", "--policy", str(policy), "--events", str(events)]) == 2
    assert "bad.jsonl:2: scores" in capsys.readouterr().err


def test_the_prototype_check_is_replayed_from_decisions(tmp_path: Path) -> None:
    policy = "default:\n  prototype_check: {safe: 0.5}\n"
    policies = compile_policy(parse_policy(policy, "test"), TopicRoutes("a", "r", "b"))
    rows = [
        {"tenant_id": "acme", "scores": {"safe": 0.9, "x": 0.1}, "prototype_similarity": 0.3},
        {"tenant_id": "acme", "scores": {"safe": 0.9, "x": 0.1}, "prototype_similarity": 0.7},
        {"tenant_id": "acme", "scores": {"safe": 0.9, "x": 0.1}, "prototype_similarity": None},
        # Labelled "x", which has no minimum: not checked.
        {"tenant_id": "acme", "scores": {"safe": 0.1, "x": 0.9}, "prototype_similarity": 0.1},
    ]
    path = tmp_path / "events.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    result = simulate(policies, read_events(path))
    assert dict(result.by_tenant["acme"]) == {"allow": 3, "review": 1}
