"""Exemplar-bank lookup cost at 10k, 100k and 1M entries (exact search, this machine).

    .venv/bin/python bench/bank_lookup.py [--sizes 10000 100000 1000000]

Writes bench/results/bank_lookup.json. Entries are random (PDQ bits and unit embeddings of
the served model's width, 1280); the cost of an exact scan does not depend on the values.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from consumer.banks import Bank, BankEntry, BankFile, BankModel

RESULTS = Path(__file__).resolve().parent / "results" / "bank_lookup.json"
DIM = 1280


def build(size: int, rng: np.random.Generator) -> Bank:
    meta = BankFile(
        bank_id=f"bench-{size}",
        tenant="*",
        model=BankModel(name="nsfw_mobilenet_v2", version="1", embedding_dim=DIM),
    )
    entries = [BankEntry(f"e{i}", "bench", "", "", 100) for i in range(size)]
    pdq = rng.integers(0, 256, size=(size, 32), dtype=np.uint8)
    embeddings = np.empty((size, DIM), dtype=np.float32)
    for start in range(0, size, 100_000):
        block = rng.standard_normal((min(100_000, size - start), DIM), dtype=np.float32)
        embeddings[start : start + len(block)] = block / np.linalg.norm(
            block, axis=1, keepdims=True
        )
    return Bank(meta, entries, pdq, embeddings)


def per_query_ms(run: Callable[[], object], queries: int) -> float:
    began = time.perf_counter()
    for _ in range(queries):
        run()
    return (time.perf_counter() - began) * 1000 / queries


def measure(size: int, rng: np.random.Generator) -> dict[str, float]:
    bank = build(size, rng)
    pdq_query = rng.integers(0, 256, size=32, dtype=np.uint8).tobytes()
    embedding_query = rng.standard_normal(DIM).astype(np.float32)
    batch = rng.standard_normal((32, DIM)).astype(np.float32)
    queries = max(3, min(200, 2_000_000 // size))
    bank.nearest_pdq(pdq_query)
    bank.nearest_embedding(embedding_query)
    batched_ms = per_query_ms(lambda: np.argmax(bank.embeddings @ batch.T, axis=0), queries)
    return {
        "entries": size,
        "pdq_ms_per_query": round(per_query_ms(lambda: bank.nearest_pdq(pdq_query), queries), 3),
        "embedding_ms_per_query": round(
            per_query_ms(lambda: bank.nearest_embedding(embedding_query), queries), 3
        ),
        "embedding_ms_per_query_batched_32": round(batched_ms / len(batch), 3),
        "memory_mb": round((bank.pdq.nbytes + bank.embeddings.nbytes) / 1e6, 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    rows = []
    for size in args.sizes:
        row = measure(size, rng)
        rows.append(row)
        print(json.dumps(row))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "index": "exact: Hamming scan over packed PDQ hashes, float32 matrix-vector product",
        "results": rows,
    }
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
