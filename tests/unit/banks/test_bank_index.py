"""Bank search indexes agree with brute force: exactly for hashes and small banks, and on
near-duplicates for the approximate index of large banks."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest

from consumer.banks import index as bank_index
from consumer.banks.index import EmbeddingIndex, HashIndex

DIM = 64


def _unit(rows: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    result: npt.NDArray[np.float32] = rows / np.linalg.norm(rows, axis=-1, keepdims=True)
    return result


def test_hash_index_finds_the_hamming_nearest() -> None:
    rng = np.random.default_rng(1)
    hashes = rng.integers(0, 256, size=(500, 32), dtype=np.uint8)
    index = HashIndex(hashes)
    for query in rng.integers(0, 256, size=(20, 32), dtype=np.uint8):
        bits = np.unpackbits(np.bitwise_xor(hashes, query), axis=1).sum(axis=1)
        found = index.nearest(query)
        assert found is not None
        assert found[1] == bits.min()
        assert bits[found[0]] == bits.min()
    assert HashIndex(np.zeros((0, 32), dtype=np.uint8)).nearest(hashes[0]) is None


def test_small_banks_are_searched_exactly() -> None:
    rng = np.random.default_rng(2)
    vectors = _unit(rng.standard_normal((300, DIM), dtype=np.float32))
    index = EmbeddingIndex(vectors)
    assert not index.approximate
    query = _unit(rng.standard_normal(DIM, dtype=np.float32))
    found = index.nearest(query)
    assert found is not None
    assert found[0] == int(np.argmax(vectors @ query))
    assert found[1] == pytest.approx(float(np.max(vectors @ query)), abs=1e-6)
    assert EmbeddingIndex(np.zeros((0, DIM), dtype=np.float32)).nearest(query) is None


def test_large_banks_find_near_duplicates_with_exact_similarity(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(bank_index, "ANN_MIN_ENTRIES", 2_000)
    rng = np.random.default_rng(3)
    vectors = _unit(rng.standard_normal((5_000, DIM), dtype=np.float32))
    index = EmbeddingIndex(vectors)
    assert index.approximate
    rows = rng.choice(len(vectors), 50, replace=False)
    queries = _unit(vectors[rows] + 0.1 * rng.standard_normal((50, DIM), dtype=np.float32))
    hits = 0
    for row, query in zip(rows, queries, strict=True):
        found = index.nearest(query)
        assert found is not None
        # Whatever it returns, the similarity is the exact one of that entry.
        assert found[1] == pytest.approx(float(vectors[found[0]] @ query), abs=1e-5)
        hits += found[0] == row
    assert hits >= 48, f"near-duplicate recall {hits}/50"
