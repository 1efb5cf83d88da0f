"""Exemplar banks: PDQ and embedding lookup, tenant scope, durable atomic storage."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
from PIL import Image

from consumer.banks import Bank, BankEntry, BankError, BankFile, BankModel, pdq_hash
from consumer.imaging import ImageLimits, decode_image
from consumer.samples import photos

LIMITS = ImageLimits(max_bytes=10**8, max_pixels=10**8)
META = BankFile(
    bank_id="kids-known-bad",
    tenant="kids-app",
    action="block",
    model=BankModel(name="nsfw_mobilenet_v2", version="1", embedding_dim=8),
)


def _pixels(data: bytes) -> npt.NDArray[np.uint8]:
    return decode_image(data, 224, LIMITS).pixels


def _reencoded(data: bytes, size: tuple[int, int], quality: int) -> bytes:
    out = io.BytesIO()
    Image.open(io.BytesIO(data)).convert("RGB").resize(size).save(out, "JPEG", quality=quality)
    return out.getvalue()


def _entry(entry_id: str) -> BankEntry:
    return BankEntry(entry_id, "test", "2026-11-22T00:00:00Z", "unit test", 100)


def _vector(seed: int) -> npt.NDArray[np.float32]:
    return np.random.default_rng(seed).normal(size=8).astype(np.float32)


def test_pdq_matches_a_reencoded_resized_copy_and_not_another_photo() -> None:
    original, other = photos()[0].data, photos()[1].data
    bank = Bank.empty(META)
    pdq, quality = pdq_hash(_pixels(original))
    assert quality > 50
    bank.add(_entry("astronaut"), pdq, _vector(0))

    copy = _reencoded(original, (300, 300), quality=60)
    index, distance = bank.nearest_pdq(pdq_hash(_pixels(copy))[0]) or (None, 999)
    assert index == 0
    assert distance <= 31, "a re-encoded, resized copy is a confident PDQ match"
    _, far = bank.nearest_pdq(pdq_hash(_pixels(other))[0]) or (None, 0)
    assert far > 31 * 2


def test_embedding_lookup_finds_the_closest_entry() -> None:
    bank = Bank.empty(META)
    for seed in range(5):
        bank.add(_entry(f"e{seed}"), bytes(32), _vector(seed))
    index, similarity = bank.nearest_embedding(_vector(3) * 7.0) or (None, 0.0)
    assert index == 3
    assert similarity == pytest.approx(1.0, abs=1e-6)


def test_a_tenant_bank_applies_to_that_tenant_only() -> None:
    bank = Bank.empty(META)
    assert bank.applies_to("kids-app")
    assert not bank.applies_to("acme")
    shared = Bank.empty(META.model_copy(update={"tenant": "*"}))
    assert shared.applies_to("acme")


def test_save_load_roundtrip_and_remove(tmp_path: Path) -> None:
    bank = Bank.empty(META)
    bank.add(_entry("a"), bytes(range(32)), _vector(1))
    bank.add(_entry("b"), bytes(32), _vector(2))
    folder = tmp_path / "kids-known-bad"
    bank.save(folder)

    loaded = Bank.load(folder)
    assert [e.entry_id for e in loaded.entries] == ["a", "b"]
    assert loaded.nearest_pdq(bytes(range(32))) == (0, 0)
    loaded.remove("a")
    loaded.save(folder)
    assert [e.entry_id for e in Bank.load(folder).entries] == ["b"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kids-known-bad"]


def test_bad_input_is_refused_with_what_to_fix(tmp_path: Path) -> None:
    bank = Bank.empty(META)
    bank.add(_entry("a"), bytes(32), _vector(1))
    with pytest.raises(BankError, match="already has an entry 'a'"):
        bank.add(_entry("a"), bytes(32), _vector(1))
    with pytest.raises(BankError, match="8-d embeddings"):
        bank.add(_entry("b"), bytes(32), np.zeros(4, dtype=np.float32))
    with pytest.raises(BankError, match="no entry 'zz'"):
        bank.remove("zz")
    folder = tmp_path / "broken"
    bank.save(folder)
    (folder / "bank.json").write_text('{"bank_id": "Bad Id!"}')
    with pytest.raises(BankError, match="not valid"):
        Bank.load(folder)
    with pytest.raises(BankError, match="cannot read"):
        Bank.load(tmp_path / "missing")
