"""Banks of known-bad exemplars, matched by PDQ hash and by embedding.

A bank belongs to one tenant (or to every tenant: ``"*"``) and says what a match does
(``block`` or ``review``). Each entry keeps the PDQ hash of the image (256 bits, Meta's
perceptual hash; Hamming distance ≤ 31 is a confident match) and its embedding from the
served model version (L2-normalised; cosine similarity near 1 is a near-duplicate).

Storage is a folder per bank: ``bank.json`` (what it is), ``entries.jsonl`` (one entry per
line), ``pdq.npy`` (uint8 [N, 32]) and ``embeddings.npy`` (float32 [N, D]). Files, not a
topic: a bank is reference data that changes by deliberate edits, is reviewed and versioned
with the deployment and mounted read-only into consumers; a save writes a new folder and
swaps it in by rename, so a reader never sees half a bank.

Lookup goes through ``consumer.banks.index``: exact for hashes, exact for the embeddings of
small banks and approximate (then re-scored exactly) for large ones; see
``bench/results/bank_lookup.json`` for its cost and recall at 10k-1M entries.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from consumer.banks.index import EmbeddingIndex, HashIndex
from consumer.errors import ConfigError
from consumer.runtime.folders import replace_folder

PDQ_BYTES = 32
ALL_TENANTS = "*"


class BankError(ConfigError):
    """A bank that cannot be read or changed as asked; the message says what to fix."""


class BankModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    version: str
    embedding_dim: int = Field(ge=1)
    backbone_sha256: str | None = None
    """The backbone file the embeddings came from: a re-exported backbone under the same name
    and version (fine-tuned, adapted, pruned) makes them stale. None for banks built before
    it was recorded, which are matched on name and version alone."""

    def matches(self, name: str, version: str, backbone_sha256: str | None) -> bool:
        """Whether embeddings of this model are comparable with those the served one makes."""
        known = None not in (self.backbone_sha256, backbone_sha256)
        return (self.name, self.version) == (name, version) and not (
            known and self.backbone_sha256 != backbone_sha256
        )


class BankFile(BaseModel):
    """``bank.json``, validated at the edge."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    bank_id: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]{0,62}$")
    tenant: str = Field(min_length=1, max_length=128)
    action: Literal["block", "review"] = "block"
    model: BankModel


@dataclass(frozen=True)
class BankEntry:
    entry_id: str
    label: str
    added_at: str
    source: str
    pdq_quality: int


@dataclass(frozen=True)
class Match:
    bank_id: str
    entry_id: str
    label: str
    action: str
    by: Literal["pdq", "embedding"]
    distance: float
    """Hamming distance for PDQ, 1 - cosine similarity for embeddings."""


class Bank:
    def __init__(
        self,
        meta: BankFile,
        entries: list[BankEntry],
        pdq: npt.NDArray[np.uint8],
        embeddings: npt.NDArray[np.float32],
    ) -> None:
        if not len(entries) == len(pdq) == len(embeddings):
            raise BankError(
                f"bank {meta.bank_id}: {len(entries)} entries, {len(pdq)} hashes and "
                f"{len(embeddings)} embeddings; rebuild it with `modstream bank add`"
            )
        self.meta = meta
        self.entries = entries
        self.pdq = pdq
        self.embeddings = embeddings
        self._hash_index: HashIndex | None = None
        self._embedding_index: EmbeddingIndex | None = None

    @classmethod
    def empty(cls, meta: BankFile) -> Bank:
        return cls(
            meta,
            [],
            np.zeros((0, PDQ_BYTES), dtype=np.uint8),
            np.zeros((0, meta.model.embedding_dim), dtype=np.float32),
        )

    def __len__(self) -> int:
        return len(self.entries)

    def applies_to(self, tenant_id: str) -> bool:
        return self.meta.tenant in (ALL_TENANTS, tenant_id)

    # ── lookup ─────────────────────────────────────────────────────────────────────────────

    def hash_index(self) -> HashIndex:
        """Built on first use, and again after a change."""
        if self._hash_index is None:
            self._hash_index = HashIndex(self.pdq)
        return self._hash_index

    def embedding_index(self) -> EmbeddingIndex:
        """Built on first use (a large bank takes seconds: build it before serving), and
        again after a change."""
        if self._embedding_index is None:
            self._embedding_index = EmbeddingIndex(self.embeddings, self.meta.bank_id)
        return self._embedding_index

    def nearest_pdq(self, pdq: bytes) -> tuple[int, int] | None:
        """(index, Hamming distance) of the closest hash, or None for an empty bank."""
        return self.hash_index().nearest(np.frombuffer(pdq, dtype=np.uint8))

    def nearest_embedding(self, embedding: npt.NDArray[np.float32]) -> tuple[int, float] | None:
        """(index, cosine similarity) of the closest entry, or None for an empty bank."""
        return self.embedding_index().nearest(unit(embedding))

    # ── changes ────────────────────────────────────────────────────────────────────────────

    def add(self, entry: BankEntry, pdq: bytes, embedding: npt.NDArray[np.float32]) -> None:
        self.add_many([(entry, pdq, embedding)])

    def add_many(self, items: Sequence[tuple[BankEntry, bytes, npt.NDArray[np.float32]]]) -> None:
        """Check every item, then grow the arrays once (growing per item copies the bank)."""
        ids = {entry.entry_id for entry in self.entries}
        for entry, pdq, embedding in items:
            if entry.entry_id in ids:
                raise BankError(f"bank {self.meta.bank_id} already has an entry {entry.entry_id!r}")
            ids.add(entry.entry_id)
            if len(pdq) != PDQ_BYTES:
                raise BankError(f"a PDQ hash is {PDQ_BYTES} bytes, not {len(pdq)}")
            if embedding.shape != (self.meta.model.embedding_dim,):
                raise BankError(
                    f"embedding has shape {embedding.shape}; bank {self.meta.bank_id} holds "
                    f"{self.meta.model.embedding_dim}-d embeddings of {self.meta.model.name}"
                )
        if not items:
            return
        self.entries.extend(entry for entry, _, _ in items)
        hashes = np.stack([np.frombuffer(pdq, dtype=np.uint8) for _, pdq, _ in items])
        vectors = unit(np.stack([embedding for _, _, embedding in items]))
        self.pdq = np.vstack([self.pdq, hashes])
        self.embeddings = np.vstack([self.embeddings, vectors])
        self._hash_index = self._embedding_index = None

    def remove(self, entry_id: str) -> None:
        keep = [i for i, entry in enumerate(self.entries) if entry.entry_id != entry_id]
        if len(keep) == len(self.entries):
            raise BankError(f"bank {self.meta.bank_id} has no entry {entry_id!r}")
        self.entries = [self.entries[i] for i in keep]
        self.pdq = self.pdq[keep]
        self.embeddings = self.embeddings[keep]
        self._hash_index = self._embedding_index = None

    # ── storage ────────────────────────────────────────────────────────────────────────────

    @classmethod
    def load(cls, folder: Path) -> Bank:
        try:
            meta = BankFile.model_validate_json((folder / "bank.json").read_text())
            lines = (folder / "entries.jsonl").read_text().splitlines()
            entries = [BankEntry(**json.loads(line)) for line in lines if line.strip()]
            pdq = np.load(folder / "pdq.npy", allow_pickle=False)
            embeddings = np.load(folder / "embeddings.npy", allow_pickle=False)
        except OSError as exc:
            raise BankError(f"cannot read bank {folder}: {exc}") from exc
        except (ValidationError, ValueError, TypeError) as exc:
            raise BankError(f"bank {folder} is not valid: {exc}") from exc
        if pdq.dtype != np.uint8 or pdq.ndim != 2 or pdq.shape[1] != PDQ_BYTES:
            raise BankError(
                f"{folder / 'pdq.npy'}: expected uint8 [N, 32], got {pdq.dtype} {pdq.shape}"
            )
        if embeddings.ndim != 2 or embeddings.shape[1] != meta.model.embedding_dim:
            raise BankError(
                f"{folder / 'embeddings.npy'}: expected [N, {meta.model.embedding_dim}], "
                f"got {embeddings.shape}"
            )
        return cls(meta, entries, pdq, embeddings.astype(np.float32, copy=False))

    def save(self, folder: Path) -> None:
        """Write the bank to ``folder``, replacing what was there in one rename."""

        def fill(staging: Path) -> None:
            (staging / "bank.json").write_text(self.meta.model_dump_json(indent=2) + "\n")
            (staging / "entries.jsonl").write_text(
                "".join(json.dumps(asdict(entry)) + "\n" for entry in self.entries)
            )
            np.save(staging / "pdq.npy", self.pdq)
            np.save(staging / "embeddings.npy", self.embeddings)

        replace_folder(folder, fill)


class BankSet:
    """Every bank the consumer consults, matched per tenant.

    Embeddings are compared only for banks built with the model version being served; a
    bank built with another version is matched by PDQ alone (and says so at startup).
    """

    def __init__(self, banks: list[Bank]) -> None:
        self.banks = banks
        self._embedding_banks: set[str] = {bank.meta.bank_id for bank in banks}

    @classmethod
    def load(cls, folder: Path | None) -> BankSet:
        """Every bank under ``folder`` (one sub-folder each); none when ``folder`` is None."""
        if folder is None:
            return cls([])
        if not folder.is_dir():
            raise BankError(f"bank folder {folder} does not exist; create it or unset it")
        banks = [
            Bank.load(child)
            for child in sorted(folder.iterdir())
            if (child / "bank.json").is_file()
        ]
        for bank in banks:
            bank.hash_index()  # before the first event, not during it
        return cls(banks)

    def __bool__(self) -> bool:
        return bool(self.banks)

    def use_model(self, name: str, version: str, backbone_sha256: str | None = None) -> list[str]:
        """Restrict embedding matches to banks of this model (and, where both are known, of
        this backbone file); return the bank ids left out."""
        left_out = [
            bank.meta.bank_id
            for bank in self.banks
            if not bank.meta.model.matches(name, version, backbone_sha256)
        ]
        self._embedding_banks = {bank.meta.bank_id for bank in self.banks} - set(left_out)
        for bank in self.banks:
            if bank.meta.bank_id in self._embedding_banks:
                bank.embedding_index()  # only banks that will be searched by embedding
        return left_out

    def match(
        self,
        tenant_id: str,
        pdq: bytes | None,
        embedding: npt.NDArray[np.float32] | None,
        max_pdq_distance: int | None,
        min_similarity: float | None,
    ) -> Match | None:
        """The most severe, then closest, match among the tenant's banks, if any."""
        found: list[Match] = []
        hash_query = np.frombuffer(pdq, dtype=np.uint8) if pdq is not None else None
        unit_query = unit(embedding) if embedding is not None else None
        for bank in self.banks:
            if not bank.applies_to(tenant_id):
                continue
            if hash_query is not None and max_pdq_distance is not None:
                nearest = bank.hash_index().nearest(hash_query)
                if nearest is not None and nearest[1] <= max_pdq_distance:
                    found.append(_match(bank, nearest[0], "pdq", float(nearest[1])))
            usable = bank.meta.bank_id in self._embedding_banks
            if unit_query is not None and min_similarity is not None and usable:
                closest = bank.embedding_index().nearest(unit_query)
                if closest is not None and closest[1] >= min_similarity:
                    found.append(_match(bank, closest[0], "embedding", 1.0 - closest[1]))
        if not found:
            return None
        return min(found, key=lambda m: (m.action != "block", m.distance))


def _match(bank: Bank, index: int, by: Literal["pdq", "embedding"], distance: float) -> Match:
    entry = bank.entries[index]
    return Match(bank.meta.bank_id, entry.entry_id, entry.label, bank.meta.action, by, distance)


def unit(vectors: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """Each vector (the last axis) scaled to length 1; zero vectors stay zero."""
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    result: npt.NDArray[np.float32] = (vectors / np.where(norms > 0, norms, 1)).astype(np.float32)
    return result


def pdq_hash(pixels: npt.NDArray[np.uint8]) -> tuple[bytes, int]:
    """PDQ hash (32 bytes, big-endian bit order) and quality (0-100) of RGB pixels."""
    import pdqhash

    bits, quality = pdqhash.compute(np.ascontiguousarray(pixels))
    return np.packbits(np.asarray(bits, dtype=np.uint8)).tobytes(), int(quality)
