from __future__ import annotations

import pytest
from pydantic import ValidationError

from consumer.runtime.settings import Settings


def test_nested_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODSTREAM_KAFKA__BOOTSTRAP_SERVERS", "kafka-0:9092,kafka-1:9092")
    monkeypatch.setenv("MODSTREAM_KAFKA__SASL_PASSWORD", "s3cret")
    monkeypatch.setenv("MODSTREAM_BATCHING__MAX_BATCH_SIZE", "16")
    monkeypatch.setenv("MODSTREAM_TOPICS__BLOCK", "moderation.block")
    settings = Settings()
    assert settings.kafka.bootstrap_servers == "kafka-0:9092,kafka-1:9092"
    assert settings.batching.max_batch_size == 16
    assert settings.topics.block == "moderation.block"
    assert settings.kafka.sasl_password is not None
    assert "s3cret" not in repr(settings)


def test_heartbeat_must_fit_the_session(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODSTREAM_KAFKA__SESSION_TIMEOUT_MS", "3000")
    monkeypatch.setenv("MODSTREAM_KAFKA__HEARTBEAT_INTERVAL_MS", "2000")
    with pytest.raises(ValidationError, match="heartbeat_interval_ms"):
        Settings()


def test_unknown_settings_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODSTREAM_BATCHING__MAX_BATCH_SIZ", "16")
    with pytest.raises(ValidationError):
        Settings()
