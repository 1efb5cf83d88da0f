"""Reading the labels topic: the latest verdict per event id; records that are not verdicts."""

from __future__ import annotations

from consumer.contract.events import Action
from tests.unit.training.test_feedback_labels import verdict
from training.feedback.verdicts import LabelRecord, latest_verdicts


def record(offset: int, key: bytes | None, value: bytes | None, partition: int = 0) -> LabelRecord:
    return LabelRecord(partition, offset, key, value)


def test_a_later_verdict_on_the_same_key_replaces_the_earlier_one() -> None:
    first = verdict(Action.BLOCK, "contact_overlay", event_id="a")
    second = verdict(Action.ALLOW, None, event_id="a")
    other = verdict(Action.ALLOW, None, event_id="b")
    found = latest_verdicts(
        [
            record(0, b"a", first.model_dump_json().encode()),
            record(1, b"b", other.model_dump_json().encode(), partition=1),
            record(2, b"a", second.model_dump_json().encode()),
        ],
        "labels",
    )
    assert found.latest == {"a": second, "b": other}
    assert list(found.latest) == ["a", "b"]
    assert found.replaced == 1
    assert found.problems == []


def test_a_tombstone_removes_the_verdict() -> None:
    first = verdict(Action.BLOCK, "contact_overlay", event_id="a")
    found = latest_verdicts(
        [record(0, b"a", first.model_dump_json().encode()), record(1, b"a", None)], "labels"
    )
    assert found.latest == {}
    assert found.replaced == 1


def test_records_that_are_not_verdicts_are_reported_and_skipped() -> None:
    good = verdict(Action.ALLOW, None, event_id="ok")
    wrong_key = verdict(Action.ALLOW, None, event_id="x")
    found = latest_verdicts(
        [
            record(0, None, good.model_dump_json().encode()),
            record(1, b"\xff", good.model_dump_json().encode()),
            record(2, b"bad", b"{not json"),
            record(3, b"review", good.model_dump_json().replace('"allow"', '"review"').encode()),
            record(4, b"y", wrong_key.model_dump_json().encode()),
            record(5, b"ok", good.model_dump_json().encode()),
        ],
        "labels",
    )
    assert found.latest == {"ok": good}
    assert found.problems[:3] == [
        "labels/0@0: no key (verdicts are keyed by event id)",
        "labels/0@1: key is not UTF-8",
        "labels/0@2: not a ReviewVerdict ((value): Invalid JSON: key must be a string at line 1 "
        "column 2)",
    ]
    assert found.problems[3].startswith("labels/0@3: not a ReviewVerdict (action: Input should")
    assert found.problems[4:] == ["labels/0@4: key 'y' is not the verdict's event id"]
