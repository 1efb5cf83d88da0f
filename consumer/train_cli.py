"""``modstream train``: the training tools, which run from a clone with the training extra.

``train heads`` has its own options; ``train adapt|audit|feedback|finetune|prune`` hand every
argument after their name to ``python -m training.<step>``.
"""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

from consumer.errors import ConfigError
from consumer.runtime.logs import configure_logging
from consumer.runtime.settings import LogSettings


def add_train(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    train = commands.add_parser("train", help="train models on the backbone (from a clone)")
    what = train.add_subparsers(required=True, metavar="WHAT")
    heads = what.add_parser(
        "heads", help="embed labelled images, train platform and tenant heads, report"
    )
    heads.add_argument(
        "--data", type=Path, required=True, help="folder per category, or a JSONL manifest"
    )
    heads.add_argument("--repo", type=Path, default=Path("triton_repo"))
    heads.add_argument("--backbone", default="nsfw_mobilenet_v2", help="Triton backbone model")
    heads.add_argument("--out", type=Path, default=Path("bench/results"), help="report folder")
    heads.add_argument("--card", type=Path, help="model card (default: <repo>/README.md)")
    heads.add_argument("--cache-dir", type=Path, default=Path(".cache/heads"))
    heads.add_argument("--threads", type=int, default=2, help="decode and onnxruntime threads")
    heads.add_argument("--draws", type=int, default=5, help="seeded draws per learning-curve size")
    heads.add_argument("--no-progress", action="store_true", help="no progress bars")
    heads.add_argument(
        "--export", action="store_true", help="write the heads as a new heads model version"
    )
    heads.set_defaults(handler=_train_heads)
    for step, summary in TRAINING_STEPS.items():
        command = what.add_parser(step, help=summary, add_help=False)
        command.add_argument("arguments", nargs=argparse.REMAINDER, help="see --help")
        command.set_defaults(handler=train_step, step=step)


# The shared model's training steps: `modstream train STEP ...` runs `python -m training.STEP`.
TRAINING_STEPS = {
    "adapt": "adapt the backbone to unlabelled images (BatchNorm, contrastive); probe and drift",
    "audit": "score every label's difficulty over the model pool and list suspicious labels",
    "feedback": "reviewers' verdicts as a labelled set; audit it; retrain and export the heads",
    "finetune": "fine-tune the backbone's last blocks with the heads; compare with frozen heads",
    "prune": "prune the backbone's filters, distil, export a smaller model version",
}

# Modules of the `training` extra; the service image ships none of them.
_TRAINING_MODULES = frozenset({"training", "torch", "onnxruntime", "matplotlib", "tqdm"})


def _step_cli(step: str) -> ModuleType:
    """``training.<step>.cli``; ConfigError when the training extra (or the clone) is missing."""
    try:
        return importlib.import_module(f"training.{step}.cli")
    except ModuleNotFoundError as exc:
        if exc.name is None or exc.name.partition(".")[0] not in _TRAINING_MODULES:
            raise
        raise ConfigError(
            f"train {step} needs the training extra ({exc.name} is not installed here): run it "
            "from a clone after pip install -e '.[training]'"
        ) from exc


def _train_heads(args: argparse.Namespace) -> int:
    cli = _step_cli("heads")
    configure_logging(LogSettings(json_format=False, level="INFO"))
    options = cli.TrainOptions(
        data=args.data,
        repo=args.repo,
        backbone=args.backbone,
        out=args.out,
        card=args.card,
        cache_dir=args.cache_dir,
        export=args.export,
        threads=args.threads,
        draws=args.draws,
        progress=not args.no_progress,
    )
    train_command: Callable[[object], int] = cli.train_command
    return train_command(options)


def train_step(args: argparse.Namespace) -> int:
    main: Callable[[list[str]], int] = _step_cli(args.step).main
    return main(list(args.arguments))
