"""Step B: the contrastive run over the last blocks, single-process or under torchrun (DDP).

Every process holds all the unlabelled images (a few hundred at 224 px) and draws its share
of each global batch from a :class:`DistributedSampler`. BatchNorm statistics stay at step
A's values during and after training: each image's features then do not depend on which
process or batch it is in, and the distillation term (which holds the five-class head's
outputs near the unadapted model's) is learnt under the very statistics that are served.
A checkpoint (trainable weights, optimizer state, step) is written by rank 0 every
``checkpoint_every`` steps and at the end;
``resume`` continues from it and ends where an uninterrupted run ends, because the views of
step ``s`` depend only on the seed and ``s``.
"""

from __future__ import annotations

import copy
import logging
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import Dataset, DistributedSampler
from tqdm import tqdm

from training.adapt.augment import two_views
from training.adapt.contrastive import Trainable, distillation, nt_xent
from training.adapt.split import Prefix, Suffix

logger = logging.getLogger(__name__)


class AdaptFailed(ValueError):
    """The adaptation cannot run as asked; the message is one line saying why."""


@dataclass(frozen=True)
class TrainConfig:
    """Fixed before the run; never tuned on the held-out probe."""

    steps: int = 24
    global_batch: int = 32
    lr: float = 0.005
    momentum: float = 0.9
    weight_decay: float = 1e-5
    temperature: float = 0.2
    distill: float = 1.0
    """Weight of KL(unadapted || adapted) on the frozen five-class head: holds drift down."""
    clip: float = 1.0
    """Gradient norm clip: the distillation term starts large where step A moved the head."""
    checkpoint_every: int = 10
    seed: int = 0


@dataclass(frozen=True)
class TrainResult:
    steps: int
    resumed_from: int
    world_size: int
    seconds: float
    images_per_second: float
    losses: list[float]


class _Indices(Dataset[int]):
    def __init__(self, count: int) -> None:
        self.count = count

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> int:
        return index


def world() -> tuple[int, int]:
    """(rank, world size); (0, 1) without a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _save(path: Path, payload: dict[str, Any]) -> None:
    # Written beside and renamed, so an interrupted save leaves the previous checkpoint whole.
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    torch.save(payload, partial)
    os.replace(partial, path)


def train_contrastive(
    prefix: Prefix,
    suffix: Suffix,
    images: Tensor,
    cfg: TrainConfig,
    checkpoint: Path,
    *,
    embedding_dim: int,
    resume: bool = False,
    device: torch.device | None = None,
    stop_after: int | None = None,
    progress: bool = True,
) -> TrainResult:
    """Train the suffix on ``images`` (uint8 ``[N, S, S, 3]``) for ``cfg.steps`` steps.

    ``stop_after`` ends the run early after that many steps (as an interruption would), the
    checkpoint written. Raises AdaptFailed when the batch does not fit the images or the
    processes, or the checkpoint is of another configuration.
    """
    rank, size = world()
    if cfg.global_batch % size or cfg.global_batch < 2 * size:
        raise AdaptFailed(
            f"global batch {cfg.global_batch} does not split into {size} processes of >= 2"
        )
    local = cfg.global_batch // size
    sampler: DistributedSampler[int] = DistributedSampler(
        _Indices(len(images)),
        num_replicas=size,
        rank=rank,
        shuffle=True,
        seed=cfg.seed,
        drop_last=True,
    )
    per_epoch = len(sampler) // local
    if per_epoch == 0:
        raise AdaptFailed(
            f"{len(images)} images are fewer than one global batch of {cfg.global_batch}"
        )
    place = device or torch.device("cpu")
    teacher = copy.deepcopy(suffix).eval()
    torch.manual_seed(cfg.seed)
    trainable = Trainable(suffix, embedding_dim).to(place)
    model: torch.nn.Module = trainable
    if size > 1:
        model = DistributedDataParallel(
            trainable, device_ids=None if place.type == "cpu" else [place]
        )
    parameters = [p for p in trainable.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(
        parameters, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
    )
    start = 0
    if resume and checkpoint.is_file():
        state = torch.load(checkpoint, map_location=place, weights_only=False)
        # The step count may grow on resume; anything else would mix two different runs.
        if {**state["config"], "steps": cfg.steps} != asdict(cfg):
            raise AdaptFailed(f"{checkpoint} was written with another configuration; remove it")
        trainable.load_state_dict(state["trainable"])
        optimizer.load_state_dict(state["optimizer"])
        start = int(state["step"])
        logger.info("resuming from %s at step %d", checkpoint, start)
    end = cfg.steps if stop_after is None else min(cfg.steps, stop_after)
    losses: list[float] = []
    started = time.perf_counter()
    with tqdm(
        total=cfg.steps,
        initial=start,
        unit="step",
        desc="simclr",
        disable=rank != 0 or not progress,
    ) as bar:
        for step in range(start, end):
            epoch, batch = divmod(step, per_epoch)
            sampler.set_epoch(epoch)
            indices = list(sampler)[batch * local : (batch + 1) * local]
            with torch.no_grad():
                features = prefix(two_views(images, indices, seed=cfg.seed, epoch=epoch).to(place))
                target, _ = teacher(features)
            probs, projected = model(features)
            loss = nt_xent(projected[:local], projected[local:], cfg.temperature)
            if cfg.distill:
                loss = loss + cfg.distill * distillation(probs, target)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            # After DDP's all-reduce every process holds the same gradients, so clipping
            # keeps the processes in step.
            torch.nn.utils.clip_grad_norm_(parameters, cfg.clip)
            optimizer.step()
            losses.append(float(loss.detach()))
            bar.update(1)
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
            done = step + 1
            if rank == 0 and (done % cfg.checkpoint_every == 0 or done == end):
                _save(
                    checkpoint,
                    {
                        "step": done,
                        "config": asdict(cfg),
                        "trainable": trainable.state_dict(),
                        "optimizer": optimizer.state_dict(),
                    },
                )
    if size > 1:
        dist.barrier()
    seconds = time.perf_counter() - started
    run = end - start
    return TrainResult(
        steps=end,
        resumed_from=start,
        world_size=size,
        seconds=seconds,
        images_per_second=run * cfg.global_batch / seconds if seconds > 0 else 0.0,
        losses=losses,
    )
