"""Exemplar-bank lookup cost at 10k, 100k and 1M entries, and the index's recall.

    python -m bench.bank_lookup [--sizes 10000 100000 1000000] [--out FILE]

Writes ``bench/results/bank_lookup.json`` in the clone unless ``--out`` says otherwise.
Entries are random (PDQ bits and unit embeddings of the served model's width, 1280). Per size
it times, one query at a time: the numpy scans the bank used before it had an index, and
``consumer.banks.index`` (faiss binary flat for PDQ, exact or IVF-SQ8 + exact re-scoring for
embeddings). Recall is measured where it matters: for near-duplicate queries (an entry plus
noise, cosine 0.97-0.99 to it), the fraction for which the index returns that entry, as the
exact scan does.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import numpy.typing as npt

from bench.clone import clone_root
from consumer.banks.index import (
    ANN_CANDIDATES,
    ANN_MIN_ENTRIES,
    ANN_PROBES,
    EmbeddingIndex,
    HashIndex,
)
from consumer.banks.store import unit
from consumer.errors import ConfigError

DIM = 1280
_POPCOUNT = np.array([bin(value).count("1") for value in range(256)], dtype=np.uint8)


def random_embeddings(size: int, rng: np.random.Generator) -> npt.NDArray[np.float32]:
    embeddings = np.empty((size, DIM), dtype=np.float32)
    for start in range(0, size, 100_000):
        block = rng.standard_normal((min(100_000, size - start), DIM), dtype=np.float32)
        embeddings[start : start + len(block)] = unit(block)
    return embeddings


def near_duplicates(
    embeddings: npt.NDArray[np.float32], count: int, rng: np.random.Generator
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
    """Rows drawn at random, each moved to a cosine of 0.97-0.99 from where it was."""
    rows = rng.choice(len(embeddings), count, replace=False)
    noise = unit(rng.standard_normal((count, DIM), dtype=np.float32))
    # Remove the component along the original so the mix sets the cosine exactly.
    noise = unit(noise - np.sum(noise * embeddings[rows], axis=1, keepdims=True) * embeddings[rows])
    cosine = rng.uniform(0.97, 0.99, size=(count, 1)).astype(np.float32)
    queries = cosine * embeddings[rows] + np.sqrt(1 - cosine**2) * noise
    return rows, unit(queries.astype(np.float32))


def per_query_ms(run: Callable[[int], object], queries: int) -> float:
    began = time.perf_counter()
    for index in range(queries):
        run(index)
    return (time.perf_counter() - began) * 1000 / queries


def measure(size: int, rng: np.random.Generator) -> dict[str, float | int | bool]:
    hashes = rng.integers(0, 256, size=(size, 32), dtype=np.uint8)
    embeddings = random_embeddings(size, rng)
    hash_queries = rng.integers(0, 256, size=(64, 32), dtype=np.uint8)
    rows, duplicates = near_duplicates(embeddings, 200, rng)
    scan_queries = max(3, min(200, 2_000_000 // size))

    def numpy_pdq(i: int) -> int:
        return int(np.argmin(_POPCOUNT[np.bitwise_xor(hashes, hash_queries[i % 64])].sum(axis=1)))

    def numpy_embedding(i: int) -> int:
        return int(np.argmax(embeddings @ duplicates[i % len(duplicates)]))

    began = time.perf_counter()
    hash_index = HashIndex(hashes)
    embedding_index = EmbeddingIndex(embeddings, f"bench-{size}")
    build_s = time.perf_counter() - began
    hash_index.nearest(hash_queries[0])  # thread pools start on first use, not in the timing
    found = [embedding_index.nearest(query) for query in duplicates]
    recall = float(
        np.mean([f is not None and f[0] == row for f, row in zip(found, rows, strict=True)])
    )
    return {
        "entries": size,
        "numpy_pdq_ms": round(per_query_ms(numpy_pdq, scan_queries), 3),
        "numpy_embedding_ms": round(per_query_ms(numpy_embedding, scan_queries), 3),
        "index_pdq_ms": round(
            per_query_ms(lambda i: hash_index.nearest(hash_queries[i % 64]), 200), 3
        ),
        "index_embedding_ms": round(
            per_query_ms(lambda i: embedding_index.nearest(duplicates[i % 200]), 200), 3
        ),
        "embedding_index_approximate": embedding_index.approximate,
        "near_duplicate_recall": round(recall, 3),
        "index_build_s": round(build_s, 1),
        "memory_mb_arrays": round((hashes.nbytes + embeddings.nbytes) / 1e6, 1),
        # SQ8 codes (one byte per dimension) plus an 8-byte id per entry, on top of the arrays.
        "memory_mb_ann_index": round(size * (DIM + 8) / 1e6, 1)
        if embedding_index.approximate
        else 0,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bank_lookup", description=__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--out", type=Path, help="default: <clone>/bench/results/bank_lookup.json")
    args = parser.parse_args(argv)
    # Resolved before the minutes of measuring, so a run outside a clone fails at once.
    try:
        out: Path = args.out or clone_root() / "bench" / "results" / "bank_lookup.json"
    except ConfigError as exc:
        sys.stderr.write(f"bank lookup: {exc}\n")
        return 2
    rng = np.random.default_rng(0)
    rows = []
    for size in args.sizes:
        row = measure(size, rng)
        rows.append(row)
        sys.stdout.write(json.dumps(row) + "\n")
        sys.stdout.flush()
    out.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "index": {
            "pdq": "faiss IndexBinaryFlat (exact)",
            "embedding": f"exact below {ANN_MIN_ENTRIES} entries; faiss IVF<sqrt(n)>,SQ8 with "
            f"nprobe {ANN_PROBES}, top {ANN_CANDIDATES} re-scored exactly",
        },
        "results": rows,
    }
    out.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
