from __future__ import annotations

from pathlib import Path

import pytest

from consumer.contract.events import Action
from consumer.errors import PolicyError
from consumer.moderation.policy import (
    THRESHOLD_RULE,
    ModelCategories,
    PolicySet,
    TopicRoutes,
    compile_policy,
    describe,
    load_policy,
    parse_policy,
    threshold_verdict,
)
from tests.support.paths import DEFAULT_POLICY

ROUTES = TopicRoutes(allow="t.allow", review="t.review", block="t.block")
REPO_POLICY = DEFAULT_POLICY

DOC = """
default:
  thresholds:
    sexual_explicit: {review: 0.4, block: 0.8}
    suggestive: {review: 0.6}
tenants:
  strict:
    thresholds:
      sexual_explicit: {block: 0.5}
      suggestive: {block: 0.7}
  lenient:
    thresholds:
      sexual_explicit: {block: null}
    topics: {review: lenient.review}
"""


def policies() -> PolicySet:
    return compile_policy(parse_policy(DOC, "test.yaml"), ROUTES)


def test_allow_when_nothing_reaches_a_threshold() -> None:
    verdict = policies().verdict(
        "anyone", {"sexual_explicit": 0.39, "suggestive": 0.59, "safe": 0.99}
    )
    assert verdict.action is Action.ALLOW
    assert verdict.reasons == ()


def test_thresholds_are_inclusive() -> None:
    verdict = policies().verdict("anyone", {"sexual_explicit": 0.4})
    assert verdict.action is Action.REVIEW
    assert verdict.reasons[0].threshold == 0.4


def test_block_wins_over_review() -> None:
    verdict = policies().verdict("anyone", {"sexual_explicit": 0.85, "suggestive": 0.9})
    assert verdict.action is Action.BLOCK
    assert [r.action for r in verdict.reasons] == [Action.BLOCK, Action.REVIEW]
    assert verdict.reasons[0].category == "sexual_explicit"
    assert verdict.reasons[0].rule == THRESHOLD_RULE


def test_tenant_override_changes_single_fields() -> None:
    strict = policies().rules_for("strict")
    assert strict.thresholds["sexual_explicit"].review == 0.4  # inherited
    assert strict.thresholds["sexual_explicit"].block == 0.5
    assert policies().verdict("strict", {"sexual_explicit": 0.55}).action is Action.BLOCK
    assert policies().verdict("anyone", {"sexual_explicit": 0.55}).action is Action.REVIEW


def test_null_switches_a_threshold_off_and_topics_override() -> None:
    lenient = policies().rules_for("lenient")
    verdict = threshold_verdict(lenient, {"sexual_explicit": 0.99})
    assert verdict.action is Action.REVIEW
    assert lenient.topics.for_action(Action.REVIEW) == "lenient.review"
    assert lenient.topics.for_action(Action.BLOCK) == "t.block"


def test_version_is_a_content_hash() -> None:
    same = compile_policy(parse_policy(DOC.replace("  ", "  "), "x"), ROUTES)
    reordered = DOC.replace(
        "    sexual_explicit: {review: 0.4, block: 0.8}\n    suggestive: {review: 0.6}",
        "    suggestive: {review: 0.6}\n    sexual_explicit: {block: 0.8, review: 0.4}",
    )
    assert compile_policy(parse_policy(reordered, "x"), ROUTES).version == same.version
    changed = compile_policy(parse_policy(DOC.replace("0.6", "0.65"), "x"), ROUTES)
    assert changed.version != same.version


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        (
            "default: {thresholds: {sexual_explicit: {review: 1.5}}}",
            "default.thresholds.sexual_explicit.review",
        ),
        ("default: {thresholds: {sexual_explicit: {review: 0.9, block: 0.5}}}", "above block"),
        ("default: {}\ntenants: {'Bad Tenant': {}}", "tenants"),
        ("default: {thresholds: {}}\nextra: 1", "extra"),
        ("tenants: {}", "default"),
        ("default: [", "not valid YAML"),
    ],
)
def test_invalid_documents_are_refused_with_location(text: str, fragment: str) -> None:
    with pytest.raises(PolicyError, match=r"bad\.yaml") as info:
        parse_policy(text, "bad.yaml")
    assert fragment in str(info.value)


def test_override_that_inverts_thresholds_is_refused() -> None:
    text = (
        "default: {thresholds: {sexual_explicit: {review: 0.4, block: 0.8}}}\n"
        "tenants: {t: {thresholds: {sexual_explicit: {block: 0.3}}}}"
    )
    with pytest.raises(PolicyError, match=r"review threshold 0\.4 ends up above block"):
        compile_policy(parse_policy(text, "x"), ROUTES)


def test_unknown_categories_are_refused_against_the_model() -> None:
    with pytest.raises(PolicyError, match="suggestive"):
        policies().check_categories(["sexual_explicit", "safe"])
    policies().check_categories(["sexual_explicit", "suggestive", "safe"])


def test_repository_policy_loads_and_describes() -> None:
    loaded = load_policy(REPO_POLICY, ROUTES)
    classes = ("safe_drawing", "sexual_explicit_drawn", "safe", "sexual_explicit", "suggestive")
    # What the exported model ships: prototypes for the categories with labelled examples.
    loaded.check_model(ModelCategories(classes, ("safe_drawing", "safe")))
    text = describe(loaded)
    assert "safe_drawing             labelled so: review if prototype similarity < 0.50" in text
    assert loaded.version in text
    assert "kids-app" in text
    assert "art-gallery.review" in text


def test_missing_file_is_a_policy_error(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="cannot read policy file"):
        load_policy(tmp_path / "nope.yaml", ROUTES)
