"""Heads served beside the backbone, on the real tritonserver and broker: one request scores
both; a tenant's head decides for that tenant only; a new version goes live while a consumer
runs; another backbone's heads are refused; shadow, promotion and rollback."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
import tritonclient.grpc as grpcclient

from bench.local.tansu import TansuBroker, ensure_topics
from bench.local.triton import TritonServer
from consumer.contract.events import Action, ShadowComparison
from consumer.errors import ModelMismatch
from consumer.imaging.decode import ImageLimits, decode_image
from consumer.inference import ensemble
from consumer.moderation.heads import BACKBONE_SHA_PARAMETER, HeadCategory, HeadsDescriptor
from consumer.moderation.policy import TopicRoutes, compile_policy, parse_policy
from consumer.moderation.rollout import HeadsRollout, RolloutError
from consumer.moderation.shadow_report import summarize
from consumer.runtime.kafka import read_topics
from consumer.runtime.settings import (
    HeadsSettings,
    ImagingSettings,
    PolicySettings,
    Settings,
    TritonSettings,
)
from tests.integration.conftest import SERVED_MODEL
from tests.integration.test_pipeline import (
    PARTITIONS,
    decisions_by_id,
    group_committed,
    image_event,
    make_settings,
    output_topics,
    running,
    wait_committed,
)
from tests.support.heads import HELD_OUT_PHOTOS, TRAIN_PHOTOS, cosine_head, heads_of, qr_composite
from tests.support.kafka_io import produce_all, read_until
from tests.support.paths import TRITON_REPO
from training.heads.export import HeadsExportError, export_heads
from training.heads.trained import TrainedHeads

pytestmark = pytest.mark.integration

ENSEMBLE = "moderation"
QR = HeadCategory(name="qr_solicitation", tenant="acme")
POLICY = """
default:
  thresholds:
    sexual_explicit: {review: 0.4, block: 0.8}
tenants:
  acme:
    thresholds:
      qr_solicitation: {review: 0.5, block: 0.6}
"""


@dataclass
class Served:
    triton: TritonServer
    repo: Path
    sha256: str
    embed: dict[str, npt.NDArray[np.float32]]
    """Embeddings of the training images, by name, from the served backbone."""


def _embed(
    client: grpcclient.InferenceServerClient, images: dict[str, bytes]
) -> dict[str, npt.NDArray[np.float32]]:
    limits = ImageLimits.from_settings(ImagingSettings())
    pixels = np.stack([decode_image(data, 224, limits).pixels for data in images.values()])
    tensor = grpcclient.InferInput("image", list(pixels.shape), "UINT8")
    tensor.set_data_from_numpy(pixels)
    result = client.infer(SERVED_MODEL, [tensor])
    embeddings = result.as_numpy("embedding")
    return dict(zip(images, embeddings, strict=True))


def _qr_heads(served: Served, sharpness: float = 10.0, extra: bool = False) -> TrainedHeads:
    positives = np.stack([v for k, v in served.embed.items() if k.startswith("qr-")])
    negatives = np.stack([v for k, v in served.embed.items() if k.startswith("plain-")])
    weight, bias = cosine_head(positives, negatives, sharpness)
    columns = [(QR, weight, bias)]
    if extra:
        # A platform head that never fires: proves new categories are learnt at runtime.
        columns.append((HeadCategory(name="never_fires"), weight * 0, -20.0))
    return heads_of(columns, SERVED_MODEL, served.sha256)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    repo = tmp_path_factory.mktemp("heads-repo")
    shutil.copytree(TRITON_REPO / SERVED_MODEL, repo / SERVED_MODEL)
    sha = (
        ensemble.read_config(repo / SERVED_MODEL / "config.pbtxt")
        .parameters[BACKBONE_SHA_PARAMETER]
        .string_value
    )
    server = TritonServer(
        repo, work_dir=tmp_path_factory.mktemp("triton-heads"), models=[SERVED_MODEL]
    )
    server.start(deadline_s=120)
    try:
        client = grpcclient.InferenceServerClient(server.grpc_url)
        images = {
            f"{kind}-{photo}-{seed}": qr_composite(photo, seed, with_qr=kind == "qr")
            for photo in TRAIN_PHOTOS
            for seed in range(3)
            for kind in ("qr", "plain")
        }
        result = Served(server, repo, sha, _embed(client, images))
        export_heads(repo, _qr_heads(result))
        client.load_model("heads")
        client.load_model(ENSEMBLE)
        client.close()
        yield result
    finally:
        server.close()


def test_one_request_scores_backbone_and_heads(served: Served) -> None:
    client = grpcclient.InferenceServerClient(served.triton.grpc_url)
    images = {
        f"{kind}-{photo}": qr_composite(photo, 100, with_qr=kind == "qr")
        for photo in HELD_OUT_PHOTOS
        for kind in ("qr", "plain")
    }
    limits = ImageLimits.from_settings(ImagingSettings())
    pixels = np.stack([decode_image(data, 224, limits).pixels for data in images.values()])
    tensor = grpcclient.InferInput("image", list(pixels.shape), "UINT8")
    tensor.set_data_from_numpy(pixels)
    result = client.infer(ENSEMBLE, [tensor])
    scores = result.as_numpy("head_scores")[:, 0]
    descriptor = HeadsDescriptor.model_validate_json(
        bytes(result.as_numpy("heads_descriptor")[0, 0])
    )
    assert descriptor.version == "1"
    assert descriptor.categories == (QR,)
    # The served head equals the trained one applied to the served embedding.
    expected = _qr_heads(served).scores(result.as_numpy("embedding"))[:, 0]
    assert np.max(np.abs(scores - expected)) < 1e-5
    by_name = dict(zip(images, scores, strict=True))
    for photo in HELD_OUT_PHOTOS:
        assert by_name[f"qr-{photo}"] > 0.6 > by_name[f"plain-{photo}"], by_name
    client.close()


def _settings(broker: TansuBroker, served: Served, tmp_path: Path, **heads: str) -> Settings:
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    settings = make_settings(broker, served.triton, max_batch_size=4, max_wait_ms=5)
    topics = settings.topics.model_copy(
        update={"heads_shadow": settings.topics.dead_letter.replace("dlq", "shadow")}
    )
    return settings.model_copy(
        update={
            "topics": topics,
            "policy": PolicySettings(path=policy, reload_interval_s=0),
            "triton": TritonSettings(url=served.triton.grpc_url, model_name=ENSEMBLE),
            "heads": HeadsSettings(**heads),
        }
    )


async def _decide(
    settings: Settings, records: dict[str, tuple[str, bytes]], timeout_s: float = 60
) -> None:
    kafka = settings.kafka
    await ensure_topics(
        kafka.bootstrap_servers,
        {kafka.input_topic: PARTITIONS, **{t: 1 for t in output_topics(settings)}},
    )
    payload: list[tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]] = [
        (event_id.encode(), image_event(event_id, tenant, data), [])
        for event_id, (tenant, data) in records.items()
    ]
    ends = await produce_all(kafka.bootstrap_servers, kafka.input_topic, payload)
    # Partitions this call did not write keep what earlier calls committed.
    await wait_committed(settings, {**await group_committed(settings), **ends}, timeout_s)


async def test_a_tenant_head_blocks_for_its_tenant_only(
    broker: TansuBroker, served: Served, tmp_path: Path
) -> None:
    settings = _settings(broker, served, tmp_path)
    qr = qr_composite("coffee", 7)
    plain = qr_composite("coffee", 7, with_qr=False)
    records = {"acme-qr": ("acme", qr), "other-qr": ("other", qr), "acme-plain": ("acme", plain)}
    async with running(settings):
        await _decide(settings, records)
    messages = await read_until(
        settings.kafka.bootstrap_servers, output_topics(settings), len(records), timeout_s=20
    )
    decisions = decisions_by_id(messages)
    acme = decisions["acme-qr"]
    assert acme.action is Action.BLOCK
    assert acme.reasons[0].category == "qr_solicitation"
    assert acme.model.heads_version == "1"
    other = decisions["other-qr"]
    # Same image, same backbone scores: the other tenant never sees acme's head.
    assert other.action is Action.ALLOW
    assert "qr_solicitation" not in other.scores
    assert {k: v for k, v in acme.scores.items() if k != "qr_solicitation"} == other.scores
    plain_decision = decisions["acme-plain"]
    assert plain_decision.action is Action.ALLOW, (plain_decision.reasons, plain_decision.scores)


def test_heads_of_another_backbone_are_refused(served: Served) -> None:
    wrong = _qr_heads(served)
    stale = TrainedHeads(
        categories=wrong.categories,
        weight=wrong.weight,
        bias=wrong.bias,
        normalize=wrong.normalize,
        backbone=wrong.backbone,
        backbone_sha256="0" * 64,
    )
    with pytest.raises(HeadsExportError, match="retrain them on the served backbone"):
        export_heads(served.repo, stale)
    descriptor = HeadsDescriptor.model_validate_json(
        (served.repo / "heads" / "1" / "heads.json").read_text()
    )
    with pytest.raises(ModelMismatch, match="trained on backbone"):
        descriptor.check_backbone("f" * 64)


async def test_new_version_shadow_report_promotion_and_rollback_without_restart(
    broker: TansuBroker, served: Served, tmp_path: Path
) -> None:
    candidate = export_heads(served.repo, _qr_heads(served, sharpness=12.0, extra=True))
    assert not candidate.pinned  # a new version never goes live by itself
    rollout = HeadsRollout(served.triton.grpc_url, ENSEMBLE)
    settings = _settings(broker, served, tmp_path, shadow_version=candidate.version)
    qr = qr_composite("chelsea", 11)
    try:
        rollout.promote("1")  # loads the candidate's folder too; version 1 stays live
        async with running(settings):
            await _decide(settings, {f"before-{n}": ("acme", qr) for n in range(4)})
            shadow = await read_topics(settings.kafka, [settings.topics.heads_shadow])
            promoted = rollout.promote(candidate.version, repo=served.repo)
            assert promoted.names() == ("qr_solicitation", "never_fires")
            await _decide(settings, {f"after-{n}": ("acme", qr) for n in range(4)})
            rolled_back = rollout.rollback()
            await _decide(settings, {f"back-{n}": ("acme", qr) for n in range(2)})
        status = rollout.status()
    finally:
        rollout.close()
    messages = await read_until(
        settings.kafka.bootstrap_servers, output_topics(settings), 10, timeout_s=20
    )
    decisions = decisions_by_id(messages)
    assert len(decisions) == 10  # nothing lost across promotion and rollback
    assert {decisions[f"before-{n}"].model.heads_version for n in range(4)} == {"1"}
    assert {decisions[f"after-{n}"].model.heads_version for n in range(4)} == {candidate.version}
    assert "never_fires" in decisions["after-0"].scores
    assert {decisions[f"back-{n}"].model.heads_version for n in range(2)} == {"1"}
    assert rolled_back.version == "1"
    assert (status.live, status.previous) == ("1", candidate.version)
    # The shadow compared every event decided before promotion, and routed nothing.
    comparisons = [ShadowComparison.model_validate_json(r.value or b"") for r in shadow]
    assert {c.event_id for c in comparisons} == {f"before-{n}" for n in range(4)}
    assert all(c.shadow_heads_version == candidate.version for c in comparisons)
    report = summarize(comparisons)
    assert report["events"] == 4
    assert report["agreement"] == 1.0
    # --repo persisted the promotion in the repository's ensemble config.
    pinned = ensemble.read_config(served.repo / ENSEMBLE / "config.pbtxt")
    assert ensemble.live_version(pinned) == candidate.version


def test_promotion_is_refused_when_the_policy_cannot_take_the_heads(served: Served) -> None:
    foreign = (
        "default: {}\ntenants:\n  other:\n    thresholds:\n      qr_solicitation: {block: 0.5}"
    )
    policies = compile_policy(parse_policy(foreign, "inline"), TopicRoutes("a", "r", "b"))
    rollout = HeadsRollout(served.triton.grpc_url, ENSEMBLE)
    try:
        before = rollout.status().live
        with pytest.raises(RolloutError, match="belongs to tenant acme"):
            rollout.promote("1", policies)
        assert rollout.status().live == before
    finally:
        rollout.close()


def test_policy_check_validates_against_the_served_heads(
    served: Served, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from consumer.cli import main

    good, bad = tmp_path / "good.yaml", tmp_path / "bad.yaml"
    good.write_text(POLICY)
    bad.write_text(POLICY.replace("  acme:", "  other:"))
    url = served.triton.grpc_url
    assert main(["policy", "check", str(good), "--triton", url, "--ensemble", ENSEMBLE]) == 0
    capsys.readouterr()
    assert main(["policy", "check", str(bad), "--triton", url, "--ensemble", ENSEMBLE]) == 2
    error = capsys.readouterr().err
    assert "tenant other names heads of another tenant" in error
    assert "qr_solicitation belongs to tenant acme" in error
