"""NT-Xent over every process's views, a projection head, and the distillation term.

Under DDP each process holds ``b`` of the ``B`` images of a global batch. NT-Xent needs all
``2B`` projections as negatives, so they are gathered; :class:`_Gather` sums the gradient of
every process's loss with respect to each projection back onto the process that made it. Each
process then takes the mean over its own ``2b`` anchors and DDP averages the gradients: the
result is the gradient of the mean over all ``2B`` anchors, the same as one process with the
whole batch.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F  # noqa: N812
from torch import Tensor, nn

from training.adapt.split import Suffix

PROJECTION_DIM = 128
HIDDEN_DIM = 512


class _Gather(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, local: Tensor) -> Tensor:
        ctx.rank = dist.get_rank()
        ctx.rows = local.shape[0]
        parts = [torch.empty_like(local) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, local.contiguous())
        return torch.cat(parts)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        total = grad.contiguous().clone()
        dist.all_reduce(total)
        start = ctx.rank * ctx.rows
        return total[start : start + ctx.rows]


def gather(local: Tensor) -> tuple[Tensor, int]:
    """Every process's rows in rank order, and where this process's rows start."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return local, 0
    gathered: Tensor = _Gather.apply(local)  # type: ignore[no-untyped-call]
    return gathered, dist.get_rank() * local.shape[0]


def nt_xent(z1: Tensor, z2: Tensor, temperature: float) -> Tensor:
    """Mean NT-Xent over this process's ``2b`` anchors against all ``2B`` projections."""
    b = z1.shape[0]
    a1, offset = gather(F.normalize(z1, dim=1))
    a2, _ = gather(F.normalize(z2, dim=1))
    big_b = a1.shape[0]
    everything = torch.cat([a1, a2])
    local = torch.cat([a1[offset : offset + b], a2[offset : offset + b]])
    logits = local @ everything.T / temperature
    own = torch.arange(offset, offset + b)
    rows = torch.arange(2 * b)
    self_columns = torch.cat([own, own + big_b])
    mask = torch.zeros_like(logits, dtype=torch.bool)
    mask[rows, self_columns] = True
    logits = logits.masked_fill(mask, float("-inf"))
    targets = torch.cat([own + big_b, own]).to(logits.device)
    return F.cross_entropy(logits, targets)


def distillation(student: Tensor, teacher: Tensor) -> Tensor:
    """KL(teacher || student) over the five classes, mean over images; both are softmaxes."""
    eps = 1e-12
    kl = teacher * (torch.log(teacher + eps) - torch.log(student + eps))
    return kl.sum(dim=1).mean()


class Trainable(nn.Module):
    """The suffix plus a projection head (SimCLR's g(.)), which is dropped after training."""

    def __init__(self, suffix: Suffix, embedding_dim: int) -> None:
        super().__init__()
        self.suffix = suffix
        self.projector = nn.Sequential(
            nn.Linear(embedding_dim, HIDDEN_DIM),
            nn.ReLU(),
            nn.Linear(HIDDEN_DIM, PROJECTION_DIM),
        )

    def forward(self, features: Tensor) -> tuple[Tensor, Tensor]:
        probs, embedding = self.suffix(features)
        return probs, self.projector(embedding)
