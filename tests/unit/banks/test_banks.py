"""Exemplar banks: PDQ and embedding lookup, tenant scope, durable atomic storage."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
from PIL import Image

from bench.samples import photos
from consumer.banks.store import Bank, BankEntry, BankError, BankFile, BankModel, BankSet, pdq_hash
from consumer.imaging.decode import ImageLimits, decode_image

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


def _bank(bank_id: str, tenant: str, action: str, vectors: list[int]) -> Bank:
    meta = META.model_copy(update={"bank_id": bank_id, "tenant": tenant, "action": action})
    bank = Bank.empty(meta)
    for seed in vectors:
        pdq = np.random.default_rng(seed).integers(0, 256, 32, dtype=np.uint8).tobytes()
        bank.add(_entry(f"{bank_id}-{seed}"), pdq, _vector(seed))
    return bank


def _pdq(seed: int) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, 32, dtype=np.uint8).tobytes()


def test_bank_set_keeps_tenants_apart_and_prefers_block() -> None:
    banks = BankSet(
        [
            _bank("kids", "kids-app", "block", [1]),
            _bank("shared", "*", "review", [2]),
        ]
    )
    kids = banks.match("kids-app", _pdq(1), None, 31, 0.97)
    assert kids is not None
    assert (kids.bank_id, kids.by, kids.distance, kids.action) == ("kids", "pdq", 0.0, "block")
    assert banks.match("acme", _pdq(1), _vector(1), 31, 0.97) is None
    shared = banks.match("acme", None, _vector(2), 31, 0.97)
    assert shared is not None
    assert (shared.bank_id, shared.by, shared.action) == ("shared", "embedding", "review")
    both = banks.match("kids-app", _pdq(2), _vector(1), 31, 0.97)
    assert both is not None
    assert both.action == "block", "a block match wins over a closer review match"


def test_switched_off_limits_and_other_model_versions_do_not_match() -> None:
    banks = BankSet([_bank("kids", "kids-app", "block", [1])])
    assert banks.match("kids-app", _pdq(1), _vector(1), None, None) is None
    assert banks.use_model("nsfw_mobilenet_v2", "2") == ["kids"]
    assert banks.match("kids-app", None, _vector(1), 31, 0.97) is None
    assert banks.match("kids-app", _pdq(1), None, 31, 0.97) is not None


def test_embeddings_of_another_backbone_file_are_stale_under_the_same_name() -> None:
    recorded = _bank("kids", "kids-app", "block", [1])
    model = recorded.meta.model.model_copy(update={"backbone_sha256": "a" * 64})
    bank = Bank(recorded.meta.model_copy(update={"model": model}), recorded.entries,
                recorded.pdq, recorded.embeddings)  # fmt: skip
    banks = BankSet([bank])
    assert banks.use_model("nsfw_mobilenet_v2", "1", "a" * 64) == []
    assert banks.match("kids-app", None, _vector(1), 31, 0.97) is not None
    # Re-exported (fine-tuned, adapted, pruned) under the same name and version:
    assert banks.use_model("nsfw_mobilenet_v2", "1", "b" * 64) == ["kids"]
    assert banks.match("kids-app", None, _vector(1), 31, 0.97) is None
    assert banks.match("kids-app", _pdq(1), None, 31, 0.97) is not None  # PDQ still matches
    # A bank from before backbones were recorded is matched on name and version.
    assert BankSet([recorded]).use_model("nsfw_mobilenet_v2", "1", "b" * 64) == []


def test_exemplar_match_decides_with_its_reason() -> None:
    from datetime import UTC, datetime

    from consumer.banks.store import Match
    from consumer.contract.events import Action, ImageEvent
    from consumer.inference.model_check import ModelSpec
    from consumer.moderation.decide import StageTimes, decide_event
    from consumer.moderation.policy import TopicRoutes, compile_policy, parse_policy

    spec = ModelSpec("m", "1", "image", 224, ("safe", "sexual_explicit"), 8, 32)
    policy = compile_policy(
        parse_policy(
            "default:\n  thresholds:\n    sexual_explicit: {review: 0.4, block: 0.8}\n"
            "tenants:\n  lenient:\n    exemplars: {max_pdq_distance: 10, min_similarity: null}\n",
            "test",
        ),
        TopicRoutes("allow", "review", "block"),
    )
    assert policy.rules_for("lenient").exemplars.max_pdq_distance == 10
    assert policy.rules_for("lenient").exemplars.min_similarity is None
    assert policy.rules_for("other").exemplars.max_pdq_distance == 31
    now = datetime.now(UTC)
    event = ImageEvent(event_id="e1", tenant_id="kids-app", image_b64="AAAA", created_at=now)
    times = StageTimes(now, 0.0, 0.0, 0.0)
    probs = np.array([0.9, 0.1], dtype=np.float32)
    match = Match("kids", "kids-1", "known-bad", "block", "pdq", 4.0)

    routed = decide_event(event, probs, spec, policy, times, now, exemplar=match)

    assert routed.decision.action is Action.BLOCK
    assert routed.topic == "block"
    (reason,) = routed.decision.reasons
    assert (reason.rule, reason.bank_id, reason.entry_id) == ("exemplar_match", "kids", "kids-1")
    assert (reason.score, reason.threshold, reason.category) == (4.0, 31.0, "known-bad")
    assert decide_event(event, probs, spec, policy, times, now).decision.action is Action.ALLOW


def test_pool_disagreement_turns_an_allow_into_a_review_only() -> None:
    from datetime import UTC, datetime

    from consumer.contract.events import Action, ImageEvent
    from consumer.inference.model_check import ModelSpec
    from consumer.moderation.decide import StageTimes, decide_event
    from consumer.moderation.policy import TopicRoutes, compile_policy, parse_policy

    spec = ModelSpec("m", "1", "image", 224, ("safe", "sexual_explicit"), 8, 32)
    policy = compile_policy(
        parse_policy(
            "default:\n  pool_max_entropy: 0.8\n  thresholds:\n"
            "    sexual_explicit: {review: 0.4, block: 0.8}\n"
            "tenants:\n  trusting:\n    pool_max_entropy: null\n",
            "test",
        ),
        TopicRoutes("allow", "review", "block"),
    )
    now = datetime.now(UTC)
    times = StageTimes(now, 0.0, 0.0, 0.0)

    def action(tenant: str, explicit: float, entropy: float | None) -> tuple[Action, list[str]]:
        event = ImageEvent(event_id="e", tenant_id=tenant, image_b64="AAAA", created_at=now)
        probs = np.array([1 - explicit, explicit], dtype=np.float32)
        decision = decide_event(event, probs, spec, policy, times, now, pool_entropy=entropy)
        return decision.decision.action, [r.rule for r in decision.decision.reasons]

    assert action("acme", 0.1, 0.85) == (Action.REVIEW, ["pool_disagreement"])
    assert action("acme", 0.1, 0.5) == (Action.ALLOW, [])
    assert action("acme", 0.1, None) == (Action.ALLOW, [])
    assert action("acme", 0.9, 0.99) == (Action.BLOCK, ["category_threshold"])
    assert action("trusting", 0.1, 0.99) == (Action.ALLOW, [])
