"""The contrastive step under DDP: 2 gloo processes match 1 process, and resume matches an
uninterrupted run. A tiny stand-in network keeps it fast; the training code is the same."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import Tensor, nn

from training.adapt.contrastive import nt_xent
from training.adapt.split import clean_cuts, last_stage_cut, reestimate_batch_norm, split
from training.adapt.train import AdaptFailed, TrainConfig, train_contrastive
from training.nsfwjs.models import NsfwModel, get_config
from training.nsfwjs.ops import Activation, BatchNorm, Conv2d, Dag, Dense, ToChannelsFirst

SIZE = 224
IMAGES = 12
CFG = TrainConfig(steps=6, global_batch=4, lr=0.05, checkpoint_every=2, seed=3)
# DDP averages the gradients of two halves of the same global batch, and the NT-Xent
# negatives are gathered across processes, so the update is the 1-process update up to float
# summation order (~1e-7 relative); 1e-5 leaves room for that over a few steps, and any real
# difference (wrong batch split, per-process negatives) is orders of magnitude larger.
TOLERANCE = 1e-5


class _MeanPool(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return x.mean(dim=(2, 3))


def tiny_model(seed: int = 0) -> NsfwModel:
    """NHWC 224 -> conv/8 -> BN -> conv/2 -> BN -> relu6 -> 1x1 conv -> BN -> pool -> dense."""
    g = torch.Generator().manual_seed(seed)

    def conv(cin: int, cout: int, k: int, s: int, pads: tuple[int, int, int, int]) -> Conv2d:
        weight = torch.randn(cout, cin, k, k, generator=g) / (cin * k * k) ** 0.5
        return Conv2d(
            weight,
            torch.zeros(cout),
            stride=(s, s),
            dilation=(1, 1),
            groups=1,
            pads=pads,
            activation="linear",
        )

    def bn(c: int) -> BatchNorm:
        return BatchNorm(
            torch.randn(c, generator=g) * 0.1,
            torch.rand(c, generator=g) + 0.5,
            torch.ones(c),
            torch.zeros(c),
            1e-3,
        )

    nodes: list[nn.Module] = [
        ToChannelsFirst(),
        conv(3, 8, 8, 8, (0, 0, 0, 0)),
        bn(8),
        conv(8, 8, 3, 2, (0, 1, 0, 1)),
        bn(8),
        Activation("relu6"),
        conv(8, 16, 1, 1, (0, 0, 0, 0)),
        bn(16),
        _MeanPool(),
        Dense(torch.randn(5, 16, generator=g), torch.zeros(5), "softmax"),
    ]
    sources = [[i] for i in range(len(nodes))]
    net = Dag(nodes, sources, [10, 9], num_inputs=1, input_shape=(SIZE, SIZE, 3))
    cfg = dataclasses.replace(get_config("mobilenet_v2"), name="tiny", embedding_dim=16)
    return NsfwModel(net, cfg).eval()


def tiny_images() -> Tensor:
    g = torch.Generator().manual_seed(1)
    return torch.randint(0, 256, (IMAGES, SIZE, SIZE, 3), generator=g, dtype=torch.uint8)


def _run(rank: int, world: int, folder: Path, stop_after: int | None, resume: bool) -> None:
    torch.set_num_threads(1)
    if world > 1:
        dist.init_process_group(
            "gloo", init_method=f"file://{folder / 'rendezvous'}", rank=rank, world_size=world
        )
    try:
        model = tiny_model()
        prefix, suffix = split(model)
        train_contrastive(
            prefix,
            suffix,
            tiny_images(),
            CFG,
            folder / "checkpoint.pt",
            embedding_dim=16,
            resume=resume,
            stop_after=stop_after,
            progress=False,
        )
        if rank == 0:
            torch.save(model.state_dict(), folder / "weights.pt")
    finally:
        if world > 1:
            dist.destroy_process_group()


def _weights(folder: Path) -> dict[str, Tensor]:
    loaded: dict[str, Tensor] = torch.load(folder / "weights.pt")
    return loaded


def _max_diff(a: dict[str, Tensor], b: dict[str, Tensor]) -> float:
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def test_the_cut_is_clean_and_before_the_last_resolution() -> None:
    model = tiny_model()
    assert last_stage_cut(model) == 3
    assert 3 in clean_cuts(model.net)
    prefix, suffix = split(model)
    images = tiny_images()[:2].float() / 255
    with torch.no_grad():
        whole = model(images)
        parts = suffix(prefix(images))
    assert all(torch.equal(a, b) for a, b in zip(whole, parts, strict=True))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {f"net.nodes.{i}.{w}" for i in (3, 4, 6, 7) for w in ("weight", "bias")}


def test_batch_norm_reestimation_normalises_each_layer_on_the_new_images() -> None:
    model = tiny_model()
    prefix, suffix = split(model)
    with torch.no_grad():
        features = prefix(tiny_images().float() / 255)
    reestimate_batch_norm(suffix, features)
    seen: list[Tensor] = []
    hooks = [
        bn.register_forward_hook(lambda _m, _i, o: seen.append(o)) for bn in suffix.batch_norms()
    ]
    with torch.no_grad():
        suffix(features)
    for hook in hooks:
        hook.remove()
    for out, bn in zip(seen, suffix.batch_norms(), strict=True):
        # With gamma 1 and beta 0, every channel comes out with mean 0 and variance ~1.
        assert out.mean(dim=(0, 2, 3)).abs().max() < 1e-4
        assert (out.var(dim=(0, 2, 3), unbiased=False) - 1).abs().max() < 1e-2 + bn.eps * 10


def test_nt_xent_is_low_for_matching_views_and_high_for_random_ones() -> None:
    z = torch.randn(8, 16)
    assert float(nt_xent(z, z, 0.2)) < float(nt_xent(z, torch.randn(8, 16), 0.2))


def test_two_gloo_processes_match_one_process(tmp_path: Path) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir()
    two.mkdir()
    _run(0, 1, one, None, False)
    spawn = mp.spawn  # type: ignore[attr-defined]
    spawn(_run, args=(2, two, None, False), nprocs=2, join=True)  # type: ignore[no-untyped-call]
    before = tiny_model().state_dict()
    moved = _max_diff(_weights(one), before)
    assert moved > 1e-3, "the run should have changed the weights"
    difference = _max_diff(_weights(one), _weights(two))
    assert difference <= TOLERANCE, f"1 vs 2 processes differ by {difference:.2e}"


def test_resume_ends_where_an_uninterrupted_run_ends(tmp_path: Path) -> None:
    whole, split_run = tmp_path / "whole", tmp_path / "split"
    whole.mkdir()
    split_run.mkdir()
    _run(0, 1, whole, None, False)
    _run(0, 1, split_run, 3, False)
    assert torch.load(split_run / "checkpoint.pt", weights_only=False)["step"] == 3
    _run(0, 1, split_run, None, True)
    assert _max_diff(_weights(whole), _weights(split_run)) <= TOLERANCE


def test_a_batch_that_does_not_fit_is_refused(tmp_path: Path) -> None:
    model = tiny_model()
    prefix, suffix = split(model)
    with pytest.raises(AdaptFailed, match="fewer than one global batch"):
        train_contrastive(
            prefix,
            suffix,
            tiny_images()[:3],
            CFG,
            tmp_path / "c.pt",
            embedding_dim=16,
            progress=False,
        )
