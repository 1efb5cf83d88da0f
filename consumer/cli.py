"""The ``modstream`` command line.

    modstream run                    the consumer (configured by MODSTREAM_* env vars)
    modstream produce PATH...        publish image files as ImageEvents
    modstream demo                   broker + Triton + consumer on loopback, with a live summary
    modstream bench                  end-to-end vs raw Triton vs naive consumer
    modstream policy check FILE      validate a policy file and print its effective rules
    modstream schema [--out DIR]     write the JSON Schemas of the event contract
    modstream review                 the human review page (token: a new reviewer token)
    modstream train heads --data D   train platform and tenant heads (from a clone)
    modstream train adapt|audit|feedback|finetune|prune  the other training steps (from a clone)

Configuration errors exit with status 2 and a one-line reason on stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from pydantic import ValidationError

from consumer.banks import cli as bank_cli
from consumer.errors import (
    BrokerUnavailable,
    ConfigError,
    InferenceUnavailable,
    LocalServiceError,
)
from consumer.moderation import heads_cli
from consumer.review import cli as review_cli
from consumer.runtime.logs import configure_logging
from consumer.runtime.settings import LogSettings, Settings
from consumer.runtime.signals import defer_signals, run_until_signalled
from consumer.train_cli import TRAINING_STEPS, add_train, train_step

logger = logging.getLogger(__name__)

EXIT_CONFIG = 2


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    given = list(sys.argv[1:] if argv is None else argv)
    if given[:1] == ["train"] and given[1:2] and given[1] in TRAINING_STEPS:
        # Everything after the step is the step's own (argparse would take its --help).
        args = argparse.Namespace(handler=train_step, step=given[1], arguments=given[2:])
    else:
        args = parser.parse_args(given)
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return handler(args)
    except (ConfigError, LocalServiceError, InferenceUnavailable, BrokerUnavailable) as exc:
        sys.stderr.write(f"modstream: {_one_line(str(exc))}\n")
        return EXIT_CONFIG
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        sys.stderr.write(f"modstream: invalid setting {where}: {first['msg']}\n")
        return EXIT_CONFIG


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="modstream", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    run = commands.add_parser("run", help="run the consumer")
    run.set_defaults(handler=_run)

    produce = commands.add_parser("produce", help="publish image files as ImageEvents")
    produce.add_argument("paths", nargs="+", type=Path, help="image files or folders")
    produce.add_argument("--bootstrap", help="Kafka bootstrap servers (default: from settings)")
    produce.add_argument("--topic", help="input topic (default: from settings)")
    produce.add_argument(
        "--tenant", action="append", dest="tenants", help="tenant id; repeat to round-robin"
    )
    produce.add_argument("--count", type=int, help="events to publish (default: one per file)")
    produce.add_argument(
        "--raw",
        action="store_true",
        help="send raw-image records (the image as the value, event fields as headers)",
    )
    produce.set_defaults(handler=_produce)

    demo = commands.add_parser("demo", help="run a self-contained demo on loopback")
    demo.add_argument("--duration", type=float, help="stop after this many seconds")
    demo.add_argument("--events", type=int, default=600, help="events to publish")
    demo.add_argument("--headless", action="store_true", help="log summaries instead of redrawing")
    demo.set_defaults(handler=_demo)

    bench = commands.add_parser("bench", help="measure end-to-end vs raw Triton vs naive")
    bench.add_argument("--events", type=int, default=400)
    bench.add_argument("--megapixels", type=float, default=6.0)
    bench.add_argument("--out", type=Path, help="report folder (default: <clone>/bench/results)")
    bench.add_argument(
        "--quick", action="store_true", help="shorter raw Triton and latency phases (smoke test)"
    )
    bench.add_argument(
        "--modes",
        help="comma-separated consumer modes: threads, workers, triton (default: every one)",
    )
    bench.add_argument(
        "--decode-workers", type=int, help="worker processes of the workers mode (default: cores)"
    )
    bench.add_argument(
        "--raw",
        action="store_true",
        help="publish raw-image records (image bytes as the value) instead of JSON events",
    )
    bench.set_defaults(handler=_bench)

    policy = commands.add_parser("policy", help="policy tools")
    policy_commands = policy.add_subparsers(required=True, metavar="ACTION")
    check = policy_commands.add_parser("check", help="validate a policy file")
    check.add_argument("file", type=Path)
    check.add_argument(
        "--categories",
        help="comma-separated categories the model produces; unknown ones are refused",
    )
    check.add_argument(
        "--triton",
        help="check against what this Triton serves: the ensemble's classes and live heads "
        "(tenant ownership included)",
    )
    check.add_argument("--ensemble", help="the ensemble to ask (default: the model in settings)")
    check.set_defaults(handler=_policy_check)
    simulate = policy_commands.add_parser(
        "simulate", help="replay scored events under a policy: actions, precision/recall, sweep"
    )
    simulate.add_argument("--policy", type=Path, required=True)
    simulate.add_argument(
        "--events", type=Path, required=True, help="JSON lines: tenant_id, scores[, label]"
    )
    simulate.add_argument(
        "--candidate-heads",
        type=Path,
        help="JSON lines of the heads-shadow topic: replay with the candidate heads' scores",
    )
    simulate.add_argument(
        "--head-categories",
        help="comma-separated head categories in the events' scores (never the model's "
        "predicted class, as in the consumer); --candidate-heads adds those it saw",
    )
    simulate.add_argument("--sweep", help="category whose block threshold to sweep (labels needed)")
    simulate.add_argument("--plot", type=Path, help="PNG of the sweep (default: no plot)")
    simulate.add_argument("--json", type=Path, help="also write the results as JSON here")
    simulate.set_defaults(handler=_policy_simulate)

    bank_cli.add_parser(commands)
    heads_cli.add_parser(commands)
    review_cli.add_parser(commands)
    add_train(commands)

    schema = commands.add_parser("schema", help="write the JSON Schemas of the contract")
    schema.add_argument("--out", type=Path, default=Path("schemas"))
    schema.set_defaults(handler=_schema)
    return parser


def _run(args: argparse.Namespace) -> int:
    defer_signals()
    from consumer.service import serve

    settings = Settings()
    configure_logging(settings.log)
    run_until_signalled(lambda stop: serve(settings, stop))
    return 0


def _produce(args: argparse.Namespace) -> int:
    from consumer.produce import image_files, publish, round_robin_records
    from consumer.runtime.kafka import build_producer, start_producer

    settings = Settings()
    configure_logging(LogSettings(json_format=False, level="WARNING"))
    kafka = settings.kafka.model_copy(
        update={k: v for k, v in (("bootstrap_servers", args.bootstrap),) if v}
    )
    topic = args.topic or kafka.input_topic
    files = image_files(args.paths)
    tenants = args.tenants or ["default"]
    count = args.count or len(files)

    async def go() -> None:
        producer = build_producer(kafka)
        await start_producer(producer, kafka.bootstrap_servers)
        try:
            records = round_robin_records(files, tenants, count, raw=args.raw)
            report = await publish(producer, topic, records)
        finally:
            await producer.stop()
        sys.stdout.write(
            f"published {report.events} events ({report.bytes / 1e6:.1f} MB) to {topic}\n"
        )

    asyncio.run(go())
    return 0


@contextlib.contextmanager
def _from_clone(command: str) -> Iterator[None]:
    """Imports of the ``bench`` package, which a clone has and the service image does not.

    Raises ConfigError, naming ``command``, when ``bench`` is not importable.
    """
    try:
        yield
    except ModuleNotFoundError as exc:
        # A missing third-party module inside bench is a broken environment, not a missing
        # clone: let it surface as it is.
        if exc.name is None or exc.name.partition(".")[0] != "bench":
            raise
        raise ConfigError(
            f"{command} runs from a clone of the repository (the bench package is not installed "
            "here)"
        ) from exc


def _demo(args: argparse.Namespace) -> int:
    with _from_clone("demo"):
        from bench.demo import run_demo

    configure_logging(LogSettings(json_format=False, level="WARNING"))
    return run_demo(duration_s=args.duration, events=args.events, headless=args.headless)


def _bench(args: argparse.Namespace) -> int:
    with _from_clone("bench"):
        from bench.clone import clone_root
        from bench.e2e import run_benchmark

    configure_logging(LogSettings(json_format=False, level="WARNING"))
    out_dir = args.out if args.out is not None else clone_root() / "bench" / "results"
    return run_benchmark(
        events=args.events,
        megapixels=args.megapixels,
        out_dir=out_dir,
        quick=args.quick,
        modes=args.modes.split(",") if args.modes else None,
        decode_workers=args.decode_workers,
        raw=args.raw,
    )


def _policy_check(args: argparse.Namespace) -> int:
    from consumer.moderation.policy import describe, load_policy
    from consumer.service import topic_routes

    settings = Settings()
    policies = load_policy(args.file, topic_routes(settings.topics))
    if args.categories:
        policies.check_categories(c.strip() for c in args.categories.split(","))
    if args.triton:
        from consumer.moderation.rollout import HeadsRollout

        rollout = HeadsRollout(args.triton, args.ensemble or settings.triton.model_name)
        try:
            policies.check_model(rollout.live_categories())
        finally:
            rollout.close()
    sys.stdout.write(describe(policies) + "\n")
    return 0


def _policy_simulate(args: argparse.Namespace) -> int:
    from consumer.moderation.policy import load_policy
    from consumer.moderation.simulate import (
        best_f1,
        plot_sweep,
        read_comparisons,
        read_events,
        simulate,
        sweep_block,
        with_candidate_heads,
        write_json,
    )
    from consumer.service import topic_routes

    settings = Settings()
    policies = load_policy(args.policy, topic_routes(settings.topics))
    events = read_events(args.events)
    heads = frozenset(c.strip() for c in (args.head_categories or "").split(",") if c.strip())
    if args.candidate_heads is not None:
        events, seen = with_candidate_heads(events, read_comparisons(args.candidate_heads))
        heads |= seen
    result = simulate(policies, events, heads)
    sys.stdout.write(f"policy {policies.version}, {len(events)} events\n\n{result.render()}\n")
    points = None
    if args.sweep:
        points = sweep_block(policies, events, args.sweep)
        best = best_f1(points)
        if best is not None and best.precision is not None and best.recall is not None:
            sys.stdout.write(
                f"\nblock threshold on {args.sweep} with the best F1: {best.threshold:.2f} "
                f"(precision {best.precision:.1%}, recall {best.recall:.1%})\n"
            )
        if args.plot:
            plot_sweep(points, args.sweep, args.plot)
            sys.stdout.write(f"wrote {args.plot}\n")
    if args.json:
        write_json(result, points, args.json)
    return 0


def _schema(args: argparse.Namespace) -> int:
    from consumer.contract.events import json_schemas

    args.out.mkdir(parents=True, exist_ok=True)
    for name, schema in json_schemas().items():
        (args.out / name).write_text(json.dumps(schema, indent=2, sort_keys=True) + "\n")
        sys.stdout.write(f"wrote {args.out / name}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
