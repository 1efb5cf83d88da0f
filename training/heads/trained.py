"""Trained heads, as the export and the served model see them: one linear score per head.

Every kind of head the trainer compares (logistic regression, nearest prototype, a small head
pulled towards the platform head) reduces to ``sigmoid(w · x + b)`` on the embedding ``x`` or,
for cosine heads, on the unit embedding. That one form is what Triton serves.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from consumer.moderation.heads import HeadCategory


@dataclass(frozen=True)
class TrainedHeads:
    categories: tuple[HeadCategory, ...]
    weight: npt.NDArray[np.float32]
    """[embedding_dim, K]."""
    bias: npt.NDArray[np.float32]
    """[K]."""
    normalize: npt.NDArray[np.bool_]
    """[K]: True for heads that score the unit embedding (cosine heads)."""
    backbone: str
    """Triton name of the backbone the embeddings came from."""
    backbone_sha256: str
    summary: dict[str, float] = field(default_factory=dict)
    """Held-out numbers per category, e.g. ``{"qr_solicitation.f1": 0.93}``."""

    def __post_init__(self) -> None:
        k = len(self.categories)
        if self.weight.ndim != 2 or self.weight.shape[1] != k:
            raise ValueError(f"weight must be [embedding_dim, {k}], got {self.weight.shape}")
        if self.bias.shape != (k,) or self.normalize.shape != (k,):
            raise ValueError(f"bias and normalize must have {k} entries")

    @property
    def embedding_dim(self) -> int:
        return int(self.weight.shape[0])

    def scores(self, embeddings: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """[N, K] probabilities: the reference the served model is checked against."""
        return head_scores(embeddings, self.weight, self.bias, self.normalize)


def head_scores(
    embeddings: npt.NDArray[np.float32],
    weight: npt.NDArray[np.float32],
    bias: npt.NDArray[np.float32],
    normalize: npt.NDArray[np.bool_],
) -> npt.NDArray[np.float32]:
    x = embeddings.astype(np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    unit = x / np.maximum(norms, 1e-12)
    logits = np.where(normalize[None, :], unit @ weight, x @ weight) + bias[None, :]
    result: npt.NDArray[np.float32] = np.exp(-np.logaddexp(0.0, -logits)).astype(
        np.float32
    )  # sigmoid, overflow-free
    return result
