"""Hot reload: a changed policy file applies; an invalid one is refused and the old one stays."""

from __future__ import annotations

from pathlib import Path

import pytest
from aiokafka.structs import ConsumerRecord

from consumer.moderation.policy import (
    ModelCategories,
    PolicySet,
    TopicRoutes,
    load_policy,
    parse_policy,
)
from consumer.moderation.watch import PolicySources, PolicyTopic, PolicyWatcher
from consumer.runtime.metrics import Metrics

ROUTES = TopicRoutes(allow="a", review="r", block="b")
CATEGORIES = ("safe", "sexual_explicit", "suggestive")
FIRST = "default:\n  thresholds:\n    sexual_explicit: {review: 0.4, block: 0.8}\n"
SECOND = "default:\n  thresholds:\n    sexual_explicit: {review: 0.4, block: 0.5}\n"


class Harness:
    def __init__(self, path: Path, categories: tuple[str, ...] | None = CATEGORIES) -> None:
        self.applied: list[PolicySet] = []
        self.metrics = Metrics()
        self.categories = categories
        self.sources = PolicySources(
            parse_policy(path.read_text(), str(path)),
            ROUTES,
            categories=lambda: (
                None if self.categories is None else ModelCategories(self.categories)
            ),
            apply=self.applied.append,
            reloads=self.metrics.policy_reloads,
        )
        self.watcher = PolicyWatcher(path, self.sources, initial_text=path.read_text())

    def reloads(self, result: str) -> float:
        value = self.metrics.registry.get_sample_value(
            "modstream_policy_reloads_total", {"result": result}
        )
        return value or 0.0


def _write(path: Path, text: str) -> None:
    path.write_text(text)


def _remove(path: Path) -> None:
    path.unlink()


@pytest.fixture
def policy_file(tmp_path: Path) -> Path:
    path = tmp_path / "policy.yaml"
    path.write_text(FIRST)
    return path


async def test_unchanged_file_is_not_reapplied(policy_file: Path) -> None:
    harness = Harness(policy_file)
    assert await harness.watcher.check() is False
    assert harness.applied == []


async def test_changed_file_applies_with_a_new_version(policy_file: Path) -> None:
    harness = Harness(policy_file)
    before = load_policy(policy_file, ROUTES)
    _write(policy_file, SECOND)

    assert await harness.watcher.check() is True

    (applied,) = harness.applied
    assert applied.version != before.version
    assert applied.verdict("anyone", {"sexual_explicit": 0.6}).action.value == "block"
    assert harness.reloads("applied") == 1
    assert await harness.watcher.check() is False, "the same content applies once"


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("default: [not, a, mapping", "not valid YAML"),
        ("default:\n  thresholds:\n    sexual_explicit: {review: 2}\n", "review"),
        ("default:\n  thresholds:\n    violence: {block: 0.5}\n", "violence"),
    ],
)
async def test_invalid_update_is_refused_and_logged(
    policy_file: Path, text: str, reason: str, caplog: pytest.LogCaptureFixture
) -> None:
    harness = Harness(policy_file)
    _write(policy_file, text)

    assert await harness.watcher.check() is False

    assert harness.applied == []
    assert harness.reloads("rejected") == 1
    assert any(
        reason in r.getMessage() and "previous policy stays" in r.getMessage()
        for r in caplog.records
    )
    # Fixing the file afterwards applies it.
    _write(policy_file, SECOND)
    assert await harness.watcher.check() is True


async def test_waits_for_the_model_before_checking_categories(policy_file: Path) -> None:
    harness = Harness(policy_file, categories=None)
    _write(policy_file, SECOND)
    assert await harness.watcher.check() is False
    harness.categories = CATEGORIES
    assert await harness.watcher.check() is True


async def test_a_missing_file_keeps_the_policy(policy_file: Path) -> None:
    harness = Harness(policy_file)
    _remove(policy_file)
    assert await harness.watcher.check() is False
    assert harness.applied == []


def _record(
    key: bytes | None, value: bytes | None, offset: int = 0
) -> ConsumerRecord[bytes, bytes]:
    return ConsumerRecord(
        topic="policies",
        partition=0,
        offset=offset,
        timestamp=0,
        timestamp_type=0,
        key=key,
        value=value,
        checksum=None,
        serialized_key_size=0,
        serialized_value_size=0,
        headers=(),
    )


async def test_topic_records_override_and_delete_a_tenant(policy_file: Path) -> None:
    harness = Harness(policy_file)
    topic = PolicyTopic(consumer=None, topic="policies", sources=harness.sources)
    strict = b'{"thresholds": {"sexual_explicit": {"review": 0.1, "block": 0.2}}}'

    assert topic.apply(_record(b"kids-app", strict))
    kids = harness.applied[-1]
    assert kids.verdict("kids-app", {"sexual_explicit": 0.25}).action.value == "block"
    assert kids.verdict("acme", {"sexual_explicit": 0.25}).action.value == "allow"

    assert topic.apply(_record(b"kids-app", None, 1))
    latest = harness.applied[-1]
    assert latest.verdict("kids-app", {"sexual_explicit": 0.25}).action.value == "allow"
    assert harness.applied[-1].version != kids.version


@pytest.mark.parametrize(
    ("key", "value", "reason"),
    [
        (None, b"{}", "needs the tenant id as key"),
        (b"kids-app", b"{not json", "kids-app"),
        (b"kids-app", b'{"thresholds": {"sexual_explicit": {"review": 3}}}', "thresholds"),
        (b"kids-app", b'{"thresholds": {"violence": {"block": 0.5}}}', "violence"),
    ],
)
async def test_invalid_topic_records_are_refused(
    policy_file: Path,
    key: bytes | None,
    value: bytes,
    reason: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    harness = Harness(policy_file)
    topic = PolicyTopic(consumer=None, topic="policies", sources=harness.sources)
    assert topic.apply(_record(key, value)) is False
    assert harness.applied == []
    assert harness.reloads("rejected") == 1
    assert any(reason in r.getMessage() for r in caplog.records)
