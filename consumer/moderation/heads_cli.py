"""``modstream heads status|load|promote|rollback|report``: roll heads versions out and back.

The commands talk to Triton (``--triton``, default ``MODSTREAM_TRITON__URL``) and, for the
report, to Kafka (the usual ``MODSTREAM_KAFKA__*`` settings).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from consumer.contract.events import ShadowComparison
from consumer.moderation.heads import HeadsDescriptor
from consumer.moderation.policy import PolicySet, TopicRoutes, load_policy
from consumer.moderation.rollout import HeadsRollout
from consumer.moderation.shadow_report import summarize
from consumer.runtime.kafka import read_topics
from consumer.runtime.settings import Settings


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    heads = commands.add_parser("heads", help="heads versions: status, promote, rollback, report")
    actions = heads.add_subparsers(required=True, metavar="ACTION")

    def triton_options(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--triton", help="Triton gRPC address (default: from settings)")
        parser.add_argument(
            "--ensemble", help="the ensemble serving the heads (default: the model in settings)"
        )

    status = actions.add_parser("status", help="live, previous and loaded heads versions")
    triton_options(status)
    status.set_defaults(handler=_status)

    load = actions.add_parser(
        "load", help="load heads versions added to the model repository (none goes live)"
    )
    triton_options(load)
    load.set_defaults(handler=_load)

    for name, helptext in (
        ("promote", "make a heads version live (checked first; Triton keeps serving)"),
        ("rollback", "make the previously live heads version live again"),
    ):
        action = actions.add_parser(name, help=helptext)
        if name == "promote":
            action.add_argument("version", help="the heads version to make live")
        triton_options(action)
        action.add_argument(
            "--policy", type=Path, help="refuse if this policy cannot take the version's heads"
        )
        action.add_argument(
            "--repo", type=Path, help="also pin the version in this model repository's ensemble"
        )
        action.set_defaults(handler=_promote if name == "promote" else _rollback)

    report = actions.add_parser("report", help="summarise the shadow topic (JSON)")
    report.add_argument("--topic", help="default: MODSTREAM_TOPICS__HEADS_SHADOW")
    report.add_argument("--out", type=Path, help="write the JSON here too")
    report.set_defaults(handler=_report)


def _rollout(args: argparse.Namespace) -> HeadsRollout:
    settings = Settings()
    return HeadsRollout(
        args.triton or settings.triton.url, args.ensemble or settings.triton.model_name
    )


def _policies(path: Path | None) -> PolicySet | None:
    if path is None:
        return None
    topics = Settings().topics
    return load_policy(path, TopicRoutes(topics.allow, topics.review, topics.block))


def _status(args: argparse.Namespace) -> int:
    return _show_status(args, load=False)


def _load(args: argparse.Namespace) -> int:
    return _show_status(args, load=True)


def _show_status(args: argparse.Namespace, load: bool) -> int:
    rollout = _rollout(args)
    try:
        status = rollout.load() if load else rollout.status()
    finally:
        rollout.close()
    _write(
        {
            "ensemble": status.ensemble,
            "live": status.live,
            "previous": status.previous,
            "versions": {version: _describe(entry) for version, entry in status.versions.items()},
        }
    )
    return 0


def _promote(args: argparse.Namespace) -> int:
    rollout = _rollout(args)
    try:
        descriptor = rollout.promote(args.version, _policies(args.policy), args.repo)
    finally:
        rollout.close()
    _write({"live": descriptor.version, "heads": _describe(descriptor)})
    return 0


def _rollback(args: argparse.Namespace) -> int:
    rollout = _rollout(args)
    try:
        descriptor = rollout.rollback(_policies(args.policy), args.repo)
    finally:
        rollout.close()
    _write({"live": descriptor.version, "heads": _describe(descriptor)})
    return 0


def _report(args: argparse.Namespace) -> int:
    settings = Settings()
    topic = args.topic or settings.topics.heads_shadow
    records = asyncio.run(read_topics(settings.kafka, [topic]))
    comparisons = []
    for record in records:
        try:
            comparisons.append(ShadowComparison.model_validate_json(record.value or b""))
        except ValidationError:
            sys.stderr.write(
                f"modstream: skipping {topic}[{record.partition}]@{record.offset}: "
                "not a shadow comparison\n"
            )
    report = summarize(comparisons)
    if args.out is not None:
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    _write(report)
    return 0


def _describe(entry: HeadsDescriptor | str) -> Any:
    if isinstance(entry, str):
        return {"state": entry}
    return {
        "categories": [f"{h.name} ({h.tenant or 'platform'})" for h in entry.categories],
        "backbone_sha256": entry.backbone_sha256,
        "trained_at": entry.trained_at.isoformat(),
        "summary": entry.summary,
    }


def _write(payload: Any) -> None:
    sys.stdout.write(json.dumps(payload, indent=2) + "\n")
