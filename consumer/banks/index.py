"""Nearest-neighbour search over a bank's PDQ hashes and embeddings.

PDQ hashes are searched exactly at every size: faiss's binary flat index compares 256-bit
hashes with hardware popcount, about ten times faster than a numpy scan. Embeddings are
searched exactly (one matrix-vector product) up to ``ANN_MIN_ENTRIES``; larger banks use an
inverted-file index with 8-bit scalar-quantised vectors (faiss ``IVF<n>,SQ8``, inner product
on unit vectors) to find candidates, which are then re-scored exactly against the float
vectors, so the reported similarity is exact and only recall is approximate
(``bench/bank_lookup.py`` measures it).
"""

from __future__ import annotations

import logging
import math
import time

import faiss
import numpy as np
import numpy.typing as npt

logger = logging.getLogger(__name__)

ANN_MIN_ENTRIES = 50_000
# Lists probed per query and candidates re-scored: recall against speed (see the benchmark).
ANN_PROBES = 16
ANN_CANDIDATES = 8
# k-means wants a few dozen training points per list; more only slows the build.
_TRAINING_POINTS_PER_LIST = 40


class HashIndex:
    """Exact Hamming nearest neighbour over packed 256-bit PDQ hashes."""

    def __init__(self, hashes: npt.NDArray[np.uint8]) -> None:
        self._index = faiss.IndexBinaryFlat(hashes.shape[1] * 8)
        if len(hashes):
            self._index.add(np.ascontiguousarray(hashes))

    def nearest(self, query: npt.NDArray[np.uint8]) -> tuple[int, int] | None:
        """(row, Hamming distance) of the closest hash, or None when there are none."""
        if self._index.ntotal == 0:
            return None
        distances, rows = self._index.search(np.ascontiguousarray(query[None, :]), 1)
        return int(rows[0, 0]), int(distances[0, 0])


class EmbeddingIndex:
    """Highest cosine similarity over unit embeddings: exact for small banks, IVF above."""

    def __init__(self, vectors: npt.NDArray[np.float32], name: str = "") -> None:
        self._vectors = vectors
        self._ann: faiss.Index | None = None
        if len(vectors) >= ANN_MIN_ENTRIES:
            self._ann = _build_ivf(vectors, name)

    @property
    def approximate(self) -> bool:
        return self._ann is not None

    def nearest(self, query: npt.NDArray[np.float32]) -> tuple[int, float] | None:
        """(row, cosine similarity) of the closest vector, or None when there are none."""
        if len(self._vectors) == 0:
            return None
        if self._ann is None:
            similarities = self._vectors @ query
            row = int(np.argmax(similarities))
            return row, float(similarities[row])
        _, candidates = self._ann.search(np.ascontiguousarray(query[None, :]), ANN_CANDIDATES)
        rows = candidates[0][candidates[0] >= 0]
        if len(rows) == 0:
            return None
        exact = self._vectors[rows] @ query
        best = int(np.argmax(exact))
        return int(rows[best]), float(exact[best])


def _build_ivf(vectors: npt.NDArray[np.float32], name: str) -> faiss.Index:
    started = time.perf_counter()
    count, dim = vectors.shape
    lists = max(64, min(4096, int(math.sqrt(count))))
    index = faiss.index_factory(dim, f"IVF{lists},SQ8", faiss.METRIC_INNER_PRODUCT)
    rng = np.random.default_rng(0)
    sample = min(count, lists * _TRAINING_POINTS_PER_LIST)
    index.train(np.ascontiguousarray(vectors[rng.choice(count, sample, replace=False)]))
    index.add(np.ascontiguousarray(vectors))
    faiss.extract_index_ivf(index).nprobe = ANN_PROBES
    logger.info(
        "bank %s: IVF index of %d embeddings (%d lists) built in %.1fs",
        name,
        count,
        lists,
        time.perf_counter() - started,
    )
    return index
