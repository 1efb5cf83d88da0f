"""``python -m training.feedback`` (also ``modstream train feedback``): reviewers' verdicts
as training data.

    python -m training.feedback build --out DIR [--tenant T] [--topic modstream.labels]
        [--bootstrap HOST:PORT] [--repo triton_repo]
    python -m training.feedback audit --data DIR --out DIR [--with BASE ...]
        [--backbones a,b,c] [--top 50]
    python -m training.feedback retrain --data DIR --with BASE [--with BASE ...]
        --repo triton_repo --out DIR [--no-export]

``build`` reads the labels topic (latest verdict per event id) and each verdict's image from
its input record, and writes a manifest set the heads trainer reads (``training.feedback.
build``). ``audit`` runs the label audit (``training.audit``) over it with ``--flip 0``: the
given labels as they are. ``retrain`` merges the set with the existing training data, trains,
and exports the next heads version (never the live one). Kafka settings come from the usual
``MODSTREAM_KAFKA__*`` variables. Exit 2 with one line on stderr for bad input: a missing
topic, an unreachable broker, an empty set.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from pathlib import Path

from pydantic import ValidationError

from consumer.errors import ModstreamError
from consumer.runtime.settings import Settings
from training.audit.cli import POOL, AuditOptions, audit_command
from training.feedback.build import REPORT_NAME, BuildOptions, build_set
from training.feedback.labels import catalog_of
from training.feedback.merge import merge_sets
from training.feedback.retrain import RetrainOptions, base_sets, retrain

logger = logging.getLogger(__name__)

PROG = "python -m training.feedback"
AUDIT_SET_FOLDER = "audited-set"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    build = commands.add_parser("build", help="the labelled set from the labels topic")
    build.add_argument("--out", type=Path, required=True, help="folder to write (replaced)")
    build.add_argument("--tenant", help="only this tenant's verdicts")
    build.add_argument("--topic", help="labels topic (default: MODSTREAM_TOPICS__LABELS)")
    build.add_argument("--bootstrap", help="Kafka (default: MODSTREAM_KAFKA__BOOTSTRAP_SERVERS)")
    build.add_argument("--timeout", type=float, default=60.0, help="seconds to read the topic")
    _repo_options(build)

    audit = commands.add_parser("audit", help="label audit of the set (training.audit)")
    audit.add_argument("--data", type=Path, required=True, help="the set build wrote")
    audit.add_argument("--out", type=Path, required=True, help="report folder")
    _with_option(audit, "audit the verdicts together with this set (repeatable)")
    audit.add_argument("--backbones", default=",".join(POOL), help="comma-separated pool")
    audit.add_argument("--repo", type=Path, default=Path("triton_repo"))
    audit.add_argument("--top", type=int, default=50, help="labels listed in audit.html")
    audit.add_argument("--cache-dir", type=Path, default=Path(".cache/heads"))

    again = commands.add_parser("retrain", help="retrain the heads, export a new version")
    again.add_argument("--data", type=Path, required=True, help="the set build wrote")
    _with_option(again, "existing training data to merge in (repeatable)")
    again.add_argument("--out", type=Path, required=True, help="report folder")
    again.add_argument("--cache-dir", type=Path, default=Path(".cache/heads"))
    again.add_argument("--threads", type=int, default=2)
    again.add_argument("--draws", type=int, default=5, help="seeded draws per curve size")
    again.add_argument("--no-export", action="store_true", help="train and report only")
    _repo_options(again)
    return parser


def _with_option(parser: argparse.ArgumentParser, helptext: str) -> None:
    parser.add_argument(
        "--with", dest="base", type=Path, action="append", default=[], help=helptext
    )


def _repo_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--repo", type=Path, default=Path("triton_repo"))
    parser.add_argument("--backbone", default="nsfw_mobilenet_v2")
    parser.add_argument("--heads-model", default="heads")
    parser.add_argument("--ensemble", default="moderation")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    # force: a process that called main before (tests do) may have left a handler on a
    # stream that is closed now.
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", force=True
    )
    try:
        if args.command == "build":
            return _build(args)
        if args.command == "audit":
            return _audit(args)
        return _retrain(args)
    except (ModstreamError, TimeoutError) as exc:
        sys.stderr.write(f"{PROG} {args.command}: {' '.join(str(exc).split())}\n")
        return 2
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        sys.stderr.write(f"{PROG} {args.command}: invalid setting {where}: {first['msg']}\n")
        return 2


def _build(args: argparse.Namespace) -> int:
    settings = Settings()
    kafka = settings.kafka
    if args.bootstrap:
        kafka = kafka.model_copy(update={"bootstrap_servers": args.bootstrap})
    options = BuildOptions(
        out=args.out,
        labels_topic=args.topic or settings.topics.labels,
        catalog=catalog_of(args.repo, args.backbone, args.heads_model, args.ensemble),
        tenant=args.tenant,
        kafka=kafka,
        imaging=settings.imaging,
        timeout_s=args.timeout,
    )
    report = asyncio.run(build_set(options))
    sys.stdout.write(
        f"wrote {report['rows']} rows to {args.out} ({len(report['skipped'])} verdicts "
        f"skipped, reasons in {args.out / REPORT_NAME}): {json.dumps(report['counts'])}\n"
    )
    return 0


def _audit(args: argparse.Namespace) -> int:
    data = args.data
    if args.base:
        data = args.out / AUDIT_SET_FOLDER
        merge_sets([args.data, *base_sets(args.base)], data)
    options = AuditOptions(
        data=data,
        out=args.out,
        # The verdicts are audited as given: no labels are flipped on purpose.
        flip=0.0,
        top=args.top,
        repo=args.repo,
        backbones=tuple(name for name in args.backbones.split(",") if name),
        cache_dir=args.cache_dir,
    )
    status = audit_command(options)
    sys.stdout.write(f"wrote audit.json and audit.html to {args.out}\n")
    return status


def _retrain(args: argparse.Namespace) -> int:
    options = RetrainOptions(
        feedback=args.data,
        base=base_sets(args.base),
        repo=args.repo,
        out=args.out,
        backbone=args.backbone,
        heads_model=args.heads_model,
        cache_dir=args.cache_dir,
        threads=args.threads,
        draws=args.draws,
        export=not args.no_export,
    )
    done = retrain(options)
    if done.version is not None:
        sys.stdout.write(
            f"exported heads version {done.version} to {args.repo / args.heads_model}; it is "
            f"not live: shadow it (MODSTREAM_HEADS__SHADOW_VERSION={done.version}), then "
            f"`modstream heads promote {done.version}`\n"
        )
    return 0
