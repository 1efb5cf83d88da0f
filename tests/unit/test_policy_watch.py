"""Hot reload: a changed policy file applies; an invalid one is refused and the old one stays."""

from __future__ import annotations

from pathlib import Path

import pytest

from consumer.metrics import Metrics
from consumer.policy import PolicySet, TopicRoutes, load_policy
from consumer.policy_watch import PolicyWatcher

ROUTES = TopicRoutes(allow="a", review="r", block="b")
CATEGORIES = ("safe", "sexual_explicit", "suggestive")
FIRST = "default:\n  thresholds:\n    sexual_explicit: {review: 0.4, block: 0.8}\n"
SECOND = "default:\n  thresholds:\n    sexual_explicit: {review: 0.4, block: 0.5}\n"


class Harness:
    def __init__(self, path: Path, categories: tuple[str, ...] | None = CATEGORIES) -> None:
        self.applied: list[PolicySet] = []
        self.metrics = Metrics()
        self.categories = categories
        self.watcher = PolicyWatcher(
            path,
            ROUTES,
            categories=lambda: self.categories,
            apply=self.applied.append,
            metrics=self.metrics,
            initial_text=path.read_text(),
        )

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
    assert applied.decide("anyone", {"sexual_explicit": 0.6}).action.value == "block"
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
