"""Joint training of the tail (last blocks + ``Conv_1``) and one sigmoid head per category.

Loss per batch: the mean binary cross-entropy of the heads (multi-label, as the served heads
are) plus ``distill`` times KL(original || tuned) over the five nsfwjs classes, so the
built-in categories keep their meaning while the embedding moves. The nsfwjs classifier's
Dense layers are frozen: only the convolutions and batch norms of the tail and the heads
learn. Batch norms use their stored statistics (batches of 32 are too small to estimate new
ones), so the tuned graph stays the inference graph.

The heads start from the frozen-backbone baseline (logistic regression on standardised
embeddings), so training starts where the baseline ends. Epochs are fixed in advance and the
whole run is time-boxed; nothing is chosen on the test split.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
import torch
from torch import Tensor, nn

from training.finetune.split import SplitBackbone
from training.heads.fit import Standardizer, one_torch_thread

logger = logging.getLogger(__name__)

Floats = npt.NDArray[np.float32]
Bools = npt.NDArray[np.bool_]


@dataclass(frozen=True)
class JointConfig:
    """Fixed hyperparameters, chosen before any test number was seen."""

    epochs: int = 12
    batch: int = 32
    lr_backbone: float = 1e-4
    lr_heads: float = 1e-3
    distill: float = 10.0
    seconds: float = 480.0
    """Time box for the training loop; training stops after the step that crosses it."""
    max_steps: int | None = None
    seed: int = 0
    threads: int = 1


@dataclass
class History:
    """Mean losses per epoch, and where training stopped."""

    bce: list[float] = field(default_factory=list)
    distill: list[float] = field(default_factory=list)
    steps: int = 0
    seconds: float = 0.0
    stopped_by: str = "epochs"


class Heads(nn.Module):
    """``sigmoid(w · standardise(x) + b)`` per category; the standardiser is fixed."""

    mean: Tensor
    scale: Tensor

    def __init__(self, standardizer: Standardizer, weight: Floats, bias: Floats) -> None:
        super().__init__()
        self.register_buffer("mean", torch.from_numpy(standardizer.mean.astype(np.float32)))
        self.register_buffer("scale", torch.from_numpy(standardizer.scale.astype(np.float32)))
        self.linear = nn.Linear(weight.shape[0], weight.shape[1])
        with torch.no_grad():
            self.linear.weight.copy_(torch.from_numpy(weight.T.copy()))
            self.linear.bias.copy_(torch.from_numpy(bias.copy()))

    def forward(self, embedding: Tensor) -> Tensor:
        logits: Tensor = self.linear((embedding - self.mean) / self.scale)
        return logits


def _kl(teacher: Tensor, student: Tensor) -> Tensor:
    """KL(teacher || student) per batch, for probability rows."""
    t = teacher.clamp_min(1e-8)
    s = student.clamp_min(1e-8)
    return torch.sum(t * (t.log() - s.log()), dim=1).mean()


def train_joint(
    backbone: SplitBackbone,
    heads: Heads,
    activations: Floats,
    labels: Bools,
    teacher: Floats,
    cfg: JointConfig,
) -> History:
    """Train ``backbone.tail`` (in place) and ``heads`` on the training rows."""
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    parameters = backbone.tuned_parameters()
    frozen = [p for p in backbone.tail.parameters() if all(p is not q for q in parameters)]
    for parameter in frozen:
        parameter.requires_grad_(False)
    optimizer = torch.optim.Adam(
        [
            {"params": parameters, "lr": cfg.lr_backbone},
            {"params": list(heads.parameters()), "lr": cfg.lr_heads},
        ]
    )
    x_all = torch.from_numpy(activations)
    y_all = torch.from_numpy(labels.astype(np.float32))
    t_all = torch.from_numpy(teacher)
    history = History()
    started = time.perf_counter()
    before = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        for epoch in range(cfg.epochs):
            order = rng.permutation(len(activations))
            bce_sum = kl_sum = 0.0
            seen = 0
            for start in range(0, len(order), cfg.batch):
                index = torch.from_numpy(order[start : start + cfg.batch])
                probs, embedding = backbone.tail(x_all[index])
                bce = nn.functional.binary_cross_entropy_with_logits(heads(embedding), y_all[index])
                kl = _kl(t_all[index], probs)
                loss = bce + cfg.distill * kl
                optimizer.zero_grad()
                loss.backward()  # type: ignore[no-untyped-call]
                optimizer.step()
                bce_sum += float(bce.detach()) * len(index)
                kl_sum += float(kl.detach()) * len(index)
                seen += len(index)
                history.steps += 1
                if cfg.max_steps is not None and history.steps >= cfg.max_steps:
                    history.stopped_by = "max_steps"
                    break
                if time.perf_counter() - started > cfg.seconds:
                    history.stopped_by = "time_box"
                    break
            history.bce.append(bce_sum / max(seen, 1))
            history.distill.append(kl_sum / max(seen, 1))
            logger.info(
                "epoch %d: BCE %.4f, KL to the original classes %.5f (%.0f s)",
                epoch + 1,
                history.bce[-1],
                history.distill[-1],
                time.perf_counter() - started,
            )
            if history.stopped_by != "epochs":
                break
    finally:
        torch.set_num_threads(before)
        for parameter in frozen:
            parameter.requires_grad_(True)
    history.seconds = time.perf_counter() - started
    return history


def run_tail(
    backbone: SplitBackbone, activations: Floats, batch: int = 64
) -> tuple[Floats, Floats]:
    """(probs, embedding) of the tail as it is now, without gradients."""
    probs_rows, embedding_rows = [], []
    with torch.no_grad(), one_torch_thread():
        for start in range(0, len(activations), batch):
            probs, embedding = backbone.tail(torch.from_numpy(activations[start : start + batch]))
            probs_rows.append(probs.numpy())
            embedding_rows.append(embedding.numpy())
    return (
        np.concatenate(probs_rows).astype(np.float32),
        np.concatenate(embedding_rows).astype(np.float32),
    )


def head_scores(heads: Heads, embeddings: Floats) -> Floats:
    with torch.no_grad():
        scores = torch.sigmoid(heads(torch.from_numpy(embeddings))).numpy()
    return scores.astype(np.float32)
