from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.local.process import free_port
from consumer.cli import main
from tests.support.paths import REPO_ROOT

REPO = REPO_ROOT


def test_policy_check_prints_effective_rules(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["policy", "check", str(REPO / "policies" / "default.yaml")]) == 0
    out = capsys.readouterr().out
    assert "policy version sha256:" in out
    assert "tenant kids-app" in out


def test_invalid_policy_exits_2_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("default:\n  thresholds:\n    sexual_explicit: {review: 2}\n")
    assert main(["policy", "check", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "bad.yaml" in err
    assert "default.thresholds.sexual_explicit.review" in err


def test_policy_check_refuses_unknown_categories(capsys: pytest.CaptureFixture[str]) -> None:
    policy = str(REPO / "policies" / "default.yaml")
    assert main(["policy", "check", policy, "--categories", "sexual_explicit,safe"]) == 2
    assert "sexual_explicit_drawn" in capsys.readouterr().err


def test_schema_writes_json_schemas(tmp_path: Path) -> None:
    assert main(["schema", "--out", str(tmp_path)]) == 0
    schema = json.loads((tmp_path / "image_event.schema.json").read_text())
    assert "tenant_id" in schema["properties"]


def test_bad_setting_exits_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("MODSTREAM_BATCHING__MAX_BATCH_SIZE", "zero")
    assert main(["policy", "check", str(REPO / "policies" / "default.yaml")]) == 2
    assert "batching.max_batch_size" in capsys.readouterr().err


def test_produce_refuses_missing_paths(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["produce", str(tmp_path / "missing.jpg")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_unreachable_broker_exits_2_with_what_to_check(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    image = tmp_path / "a.png"
    image.write_bytes(b"\x89PNG\r\n\x1a\n")
    port = free_port()  # nothing listens there
    assert main(["produce", str(image), "--bootstrap", f"127.0.0.1:{port}"]) == 2
    err = capsys.readouterr().err
    assert f"cannot reach Kafka at 127.0.0.1:{port}" in err
    assert "MODSTREAM_KAFKA__BOOTSTRAP_SERVERS" in err
