"""The benchmark's consumer modes follow the consumer's settings, and a child consumer's
environment reproduces the settings it was given."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bench.e2e.child import settings_env
from bench.e2e.modes import (
    MODES,
    PREPROCESS_MODEL,
    bytes_model,
    choose_modes,
    describe_mode,
    mode_settings,
    supported_modes,
    triton_mode_models,
)
from consumer.errors import ConfigError
from consumer.runtime.settings import ImagingSettings, Settings, TritonSettings


def test_threads_is_always_supported_and_the_rest_follow_the_settings() -> None:
    supported = supported_modes()
    fields = ImagingSettings.model_fields
    assert supported[0] == "threads"
    assert set(supported) <= set(MODES)
    assert ("triton" in supported) == ("decode_in" in fields)


@pytest.mark.parametrize("mode", supported_modes())
def test_each_supported_mode_selects_itself(mode: str) -> None:
    chosen = mode_settings(Settings(), mode, decode_workers=3)
    described = describe_mode(chosen)
    if "decode_in" in described:
        assert described["decode_in"] == ("triton" if mode == "triton" else "consumer")
    if mode == "workers":
        assert chosen.imaging.decode_workers == 3
        if "decode_pool" in described:
            assert described["decode_pool"] == "processes"
    elif "decode_pool" in described:
        assert described["decode_pool"] == "threads"


def test_unknown_and_unsupported_modes_are_refused(tmp_path: Path) -> None:
    triton = TritonSettings()
    with pytest.raises(ConfigError, match="unknown consumer mode"):
        choose_modes(["gpu"], triton, tmp_path)
    with pytest.raises(ConfigError, match="at least one"):
        choose_modes([], triton, tmp_path)
    if "triton" in supported_modes():
        with pytest.raises(ConfigError, match="needs"):
            choose_modes(["triton"], triton, tmp_path)


def test_the_triton_mode_needs_the_bytes_ensemble_in_the_repository(tmp_path: Path) -> None:
    triton = TritonSettings(model_name="m")
    assert bytes_model(triton) == "m_bytes"
    assert triton_mode_models(triton, tmp_path) is None
    for name in ("m_bytes", PREPROCESS_MODEL):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.pbtxt").write_text("")
    assert triton_mode_models(triton, tmp_path) == ["m_bytes", PREPROCESS_MODEL]
    default = choose_modes(None, triton, tmp_path)
    assert default == supported_modes()
    assert choose_modes(["threads", "threads"], triton, tmp_path) == ["threads"]


def test_without_the_ensemble_the_default_leaves_the_triton_mode_out(tmp_path: Path) -> None:
    assert "triton" not in choose_modes(None, TritonSettings(), tmp_path)


def test_the_child_environment_reproduces_the_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    base = Settings()
    settings = base.model_copy(
        update={
            "kafka": base.kafka.model_copy(
                update={"bootstrap_servers": "127.0.0.1:1", "group_id": "g"}
            ),
            "triton": TritonSettings.model_validate(
                {**base.triton.model_dump(), "pool_models": ["a", "b"], "timeout_s": 2.5}
            ),
        }
    )
    env = settings_env(settings)
    assert env["MODSTREAM_TRITON__POOL_MODELS"] == '["a", "b"]'
    assert all(name.startswith("MODSTREAM_") and "__" in name for name in env)
    for name in list(os.environ):
        if name.startswith("MODSTREAM_"):
            monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert Settings().model_dump() == settings.model_dump()
