"""The Kafka headers modstream writes on its outcomes, and which input headers it carries over.

Every header modstream sets starts with ``modstream-``; input headers with that prefix are
dropped rather than carried, so nobody upstream can forge them.
"""

from __future__ import annotations

from collections.abc import Sequence

from consumer.contract.events import DeadLetter, Decision

PREFIX = "modstream-"
ERROR_HEADER_MAX_CHARS = 512

Headers = Sequence[tuple[str, bytes]]


def carried(input_headers: Headers | None) -> list[tuple[str, bytes]]:
    """The input's headers, minus any that claim to be ours and its content-type (an outcome
    states its own: a raw-image record's ``image/*`` would mislabel a JSON decision)."""
    return [
        (k, v)
        for k, v in input_headers or ()
        if not k.startswith(PREFIX) and k.lower() != "content-type"
    ]


def decision_headers(input_headers: Headers | None, decision: Decision) -> list[tuple[str, bytes]]:
    return [
        *carried(input_headers),
        ("content-type", b"application/json"),
        (PREFIX + "schema", b"decision/" + decision.schema_version.encode()),
        (PREFIX + "action", decision.action.value.encode()),
        (PREFIX + "policy-version", decision.policy_version.encode()),
    ]


def dead_letter_headers(
    input_headers: Headers | None, letter: DeadLetter
) -> list[tuple[str, bytes]]:
    source = letter.source
    return [
        *carried(input_headers),
        ("content-type", b"application/json"),
        (PREFIX + "schema", b"dead_letter/" + letter.schema_version.encode()),
        (PREFIX + "error-code", letter.reason_code.encode()),
        (PREFIX + "error", letter.reason[:ERROR_HEADER_MAX_CHARS].encode()),
        (PREFIX + "original-topic", source.topic.encode()),
        (PREFIX + "original-partition", str(source.partition).encode()),
        (PREFIX + "original-offset", str(source.offset).encode()),
    ]
