"""Recover a pruned network by distillation from the unpruned one on unlabelled images.

Batch-norm statistics are kept from the unpruned model by default: re-estimating them on
these benign images (``calibration_batches``) was measured to make things worse (KL to the
teacher 0.38 -> 3.3 nats at 20%), since the imported statistics come from the nsfwjs training
distribution, which the unlabelled set does not resemble. Then, until the time budget or the
step cap runs out: KL divergence between the teacher's and the student's 5-class softmax at a
temperature, plus the mean squared error of the embedding (relative to the teacher's
embedding energy), on augmented batches. Batch norm stays in inference mode while training:
batches are small.

Images are drawn with probability proportional to ``unsafe_floor`` plus the teacher's
probability mass on the explicit and suggestive classes: those images decide the actions the
policy takes, and they are a few percent of an unlabelled set of benign images, so a uniform
draw would show the student almost none of them in a few minutes of CPU.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch
from torch import Tensor
from tqdm import tqdm

from training.nsfwjs.models import CLASS_NAMES, NsfwModel
from training.prune.data import ImageSet, augment
from training.prune.layers import FrozenBatchNorm

logger = logging.getLogger(__name__)

EPS = 1e-8
UNSAFE_CLASSES = ("Hentai", "Porn", "Sexy")


@dataclass(frozen=True)
class DistillConfig:
    seconds: float
    max_steps: int | None = None
    batch: int = 16
    learning_rate: float = 1e-3
    temperature: float = 2.0
    embedding_weight: float = 0.5
    calibration_batches: int = 0
    unsafe_floor: float = 0.25
    seed: int = 0
    progress: bool = True


@dataclass(frozen=True)
class DistillReport:
    steps: int
    images_seen: int
    seconds: float
    first_loss: float | None
    last_loss: float | None
    """Mean loss over the last 10 steps."""


def distillation_loss(
    student: tuple[Tensor, Tensor], teacher: tuple[Tensor, Tensor], cfg: DistillConfig
) -> Tensor:
    """T² · KL(teacher ‖ student) on softened probabilities + weighted relative embedding MSE.

    The networks end in a softmax, so the log-probabilities stand in for logits: a softmax
    of ``log p / T`` is the same as of ``logits / T``.
    """
    t = cfg.temperature
    teacher_log = torch.log_softmax(torch.log(teacher[0].clamp_min(EPS)) / t, dim=-1)
    student_log = torch.log_softmax(torch.log(student[0].clamp_min(EPS)) / t, dim=-1)
    kl = (teacher_log.exp() * (teacher_log - student_log)).sum(-1).mean() * t * t
    energy = teacher[1].pow(2).mean().clamp_min(EPS)
    mse = (student[1] - teacher[1]).pow(2).mean() / energy
    return kl + cfg.embedding_weight * mse


def recalibrate_batch_norm(model: NsfwModel, images: ImageSet, cfg: DistillConfig) -> None:
    """Re-estimate every batch norm's running statistics on un-augmented images."""
    norms = [m for m in model.modules() if isinstance(m, FrozenBatchNorm)]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # a plain average over all calibration batches
        norm.calibrating = True
        norm.train()
    order = np.random.default_rng(cfg.seed).permutation(len(images))
    with torch.no_grad():
        for start in range(0, min(len(order), cfg.calibration_batches * 32), 32):
            chunk = images.pixels[np.sort(order[start : start + 32])]
            model(torch.from_numpy(chunk).to(torch.float32) / 255.0)
    for norm in norms:
        norm.calibrating = False
        norm.eval()


def sampling_weights(
    teacher: NsfwModel, images: ImageSet, cfg: DistillConfig
) -> npt.NDArray[np.float64]:
    """How likely each image is to be drawn: floor + the teacher's non-safe probability."""
    unsafe = [CLASS_NAMES.index(name) for name in UNSAFE_CLASSES]
    masses = []
    with torch.no_grad():
        for start in range(0, len(images), 32):
            chunk = torch.from_numpy(images.pixels[start : start + 32]).to(torch.float32) / 255.0
            masses.append(teacher(chunk)[0][:, unsafe].sum(-1).double().numpy())
    weights = cfg.unsafe_floor + np.concatenate(masses)
    return np.asarray(weights / weights.sum(), dtype=np.float64)


def distill(
    student: NsfwModel, teacher: NsfwModel, images: ImageSet, cfg: DistillConfig
) -> DistillReport:
    """Train ``student`` in place to match ``teacher``; returns what happened."""
    started = time.perf_counter()
    torch.manual_seed(cfg.seed)
    generator = torch.Generator().manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    if cfg.calibration_batches:
        recalibrate_batch_norm(student, images, cfg)
    teacher.eval()
    draw = sampling_weights(teacher, images, cfg)
    logger.info(
        "drawing images by the teacher's non-safe mass: the top 5%% of images get %.0f%% of draws",
        100 * np.sort(draw)[-max(1, len(draw) // 20) :].sum(),
    )
    student.eval()
    params = [p for p in student.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=cfg.learning_rate)
    losses: list[float] = []
    step = 0
    bar = tqdm(total=int(cfg.seconds), desc="distilling", unit="s", disable=not cfg.progress)
    while cfg.max_steps is None or step < cfg.max_steps:
        elapsed = time.perf_counter() - started
        if elapsed >= cfg.seconds:
            break
        # Cosine decay over the time budget, which is what bounds the run.
        for group in optimizer.param_groups:
            group["lr"] = cfg.learning_rate * 0.5 * (1 + math.cos(math.pi * elapsed / cfg.seconds))
        index = np.sort(rng.choice(len(images), min(cfg.batch, len(images)), replace=False, p=draw))
        batch = augment(torch.from_numpy(images.pixels[index]).to(torch.float32) / 255.0, generator)
        with torch.no_grad():
            target = teacher(batch)
        loss = distillation_loss(student(batch), target, cfg)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        optimizer.step()
        losses.append(float(loss.detach()))
        step += 1
        bar.n = min(int(time.perf_counter() - started), int(cfg.seconds))
        bar.set_postfix(step=step, loss=f"{losses[-1]:.4f}")
    bar.close()
    student.eval()
    report = DistillReport(
        steps=step,
        images_seen=step * cfg.batch,
        seconds=round(time.perf_counter() - started, 1),
        first_loss=round(losses[0], 5) if losses else None,
        last_loss=round(float(np.mean(losses[-10:])), 5) if losses else None,
    )
    logger.info(
        "distilled %d steps (%d images) in %.0f s: loss %s -> %s",
        report.steps,
        report.images_seen,
        report.seconds,
        report.first_loss,
        report.last_loss,
    )
    return report
