"""The names a user embeds are pinned: removing or renaming one is a breaking change."""

from __future__ import annotations

import consumer

PUBLIC = {
    "Action",
    "ConfigError",
    "DeadLetter",
    "Decision",
    "EventRejected",
    "ImageEvent",
    "InferenceUnavailable",
    "ModelMismatch",
    "ModstreamError",
    "PolicyError",
    "Reason",
    "ReasonCode",
    "Settings",
    "__version__",
    "parse_event",
    "serve",
}


def test_all_is_exactly_the_public_surface() -> None:
    assert set(consumer.__all__) == PUBLIC
    assert len(consumer.__all__) == len(PUBLIC)


def test_every_public_name_resolves() -> None:
    for name in consumer.__all__:
        assert getattr(consumer, name) is not None, name


def test_the_top_level_names_are_the_definitions() -> None:
    from consumer.contract.events import ImageEvent
    from consumer.service import serve

    assert consumer.ImageEvent is ImageEvent
    assert consumer.serve is serve
    event = consumer.parse_event(
        b'{"event_id":"e1","tenant_id":"t","image_b64":"AAAA","created_at":"2026-01-01T00:00:00Z"}'
    )
    assert event.event_id == "e1"
