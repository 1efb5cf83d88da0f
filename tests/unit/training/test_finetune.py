"""Fine-tuning on a tiny MobileNetV2-shaped network (no nsfwjs download): the cut, a few
training steps, the comparison report, the parity-checked export, and heads of the old
backbone refused by the new one."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from consumer.errors import ModelMismatch
from consumer.inference.ensemble import read_config
from consumer.moderation.heads import BACKBONE_SHA_PARAMETER, HeadsDescriptor
from training.finetune.cli import main
from training.finetune.export import export_tuned, tuned_model
from training.finetune.features import stem_activations
from training.finetune.joint import JointConfig
from training.finetune.report import plot, write_json
from training.finetune.run import DIFFERENCE, FINETUNED, FROZEN, REFIT, Inputs, compare_methods
from training.finetune.split import SplitBackbone, split
from training.heads.triton_model import TritonPythonModel
from training.nsfwjs.errors import ImportFailed
from training.nsfwjs.models import NsfwModel, get_config
from training.nsfwjs.ops import (
    Activation,
    Add,
    BatchNorm,
    Conv2d,
    Dag,
    Dense,
    FlattenChannelsLast,
    Pool2d,
    ToChannelsFirst,
)
from training.prototypes import CATEGORY_ORDER, Prototypes

DIM = 16
SIZE = 224


def _conv(rng: torch.Generator, c_in: int, c_out: int, act: str = "linear") -> Conv2d:
    weight = torch.randn(c_out, c_in, 1, 1, generator=rng) / c_in**0.5
    return Conv2d(
        weight,
        torch.zeros(c_out),
        stride=(1, 1),
        dilation=(1, 1),
        groups=1,
        pads=(0,) * 4,
        activation=act,
    )


def _depthwise(rng: torch.Generator, channels: int) -> Conv2d:
    weight = torch.randn(channels, 1, 3, 3, generator=rng) / 3
    return Conv2d(
        weight,
        None,
        stride=(1, 1),
        dilation=(1, 1),
        groups=channels,
        pads=(1, 1, 1, 1),
        activation="relu6",
    )


def tiny_model(name: str = "tiny") -> tuple[NsfwModel, list[str]]:
    """224 px in, a stride-32 stem, blocks 15 and 16 as Keras names them, Conv_1, the pool,
    a 16-d embedding and a 5-class softmax: the shape of the real network, in miniature."""
    rng = torch.Generator().manual_seed(0)
    stem = Conv2d(
        torch.randn(8, 3, 32, 32, generator=rng) / 32,
        torch.zeros(8),
        stride=(32, 32),
        dilation=(1, 1),
        groups=1,
        pads=(0,) * 4,
        activation="relu6",
    )
    layers: list[tuple[str, torch.nn.Module, list[int]]] = [
        ("input_1", ToChannelsFirst(), [0]),
        ("Conv1", stem, [1]),
        ("block_15_expand", _conv(rng, 8, 16), [2]),
        (
            "block_15_expand_BN",
            BatchNorm(torch.zeros(16), torch.ones(16), torch.ones(16), torch.zeros(16), 1e-3),
            [3],
        ),
        ("block_15_expand_relu", Activation("relu", 6.0), [4]),
        ("block_15_depthwise", _depthwise(rng, 16), [5]),
        ("block_15_project", _conv(rng, 16, 8), [6]),
        ("block_15_add", Add(), [2, 7]),
        ("block_16_expand", _conv(rng, 8, 16, "relu6"), [8]),
        ("block_16_depthwise", _depthwise(rng, 16), [9]),
        ("block_16_project", _conv(rng, 16, 12), [10]),
        ("Conv_1", _conv(rng, 12, DIM, "relu6"), [11]),
        (
            "average_pooling2d_1",
            Pool2d("avg", kernel=(7, 7), stride=(7, 7), pads=(0,) * 4, hw=(7, 7)),
            [12],
        ),
        ("flatten_1", FlattenChannelsLast(), [13]),
        ("dense_3", Dense(torch.randn(5, DIM, generator=rng), torch.zeros(5), "softmax"), [14]),
    ]
    net = Dag(
        [module for _, module, _ in layers],
        [sources for _, _, sources in layers],
        [15, 14],
        num_inputs=1,
        input_shape=(SIZE, SIZE, 3),
    )
    cfg = replace(get_config("mobilenet_v2"), name=name, embedding_dim=DIM)
    model = NsfwModel(net, cfg)
    model.eval()
    return model, [name for name, _, _ in layers]


def _prototypes() -> Prototypes:
    matrix = np.full((len(CATEGORY_ORDER), DIM), np.nan, dtype=np.float32)
    matrix[CATEGORY_ORDER.index("safe")] = 1 / DIM**0.5
    return Prototypes(matrix=matrix, counts={"safe": 1}, source="test")


def _inputs(backbone: SplitBackbone) -> Inputs:
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(24, SIZE, SIZE, 3), dtype=np.uint8)
    # Category a: a bright image; category b: a red one. Two of each in every part.
    labels = np.zeros((24, 2), dtype=bool)
    for index in (0, 1, 12, 13):
        pixels[index] //= 4
        pixels[index] += 180
        labels[index, 0] = True
    for index in (2, 3, 14, 15):
        pixels[index, ..., 0] = 255
        labels[index, 1] = True
    x = stem_activations(backbone, pixels)
    return Inputs(
        categories=("a", "b"),
        train=x[:12],
        train_labels=labels[:12],
        test=x[12:20],
        test_labels=labels[12:20],
        test_groups=tuple(f"g{i % 3}" for i in range(8)),
        drift=x[20:],
        drift_names=tuple(f"ref{i}" for i in range(4)),
    )


def test_the_cut_reproduces_the_network() -> None:
    model, names = tiny_model()
    backbone = split(model, names, blocks=2)
    x = torch.rand(2, SIZE, SIZE, 3)
    with torch.no_grad():
        probs, embedding = model(x)
        tail_probs, tail_embedding = backbone.tail(*backbone.stem(x))
    torch.testing.assert_close(tail_probs, probs)
    torch.testing.assert_close(tail_embedding, embedding)
    assert backbone.boundary == "Conv1"
    assert split(model, names, blocks=1).boundary == "block_15_add"
    # The nsfwjs classifier is not tuned: its five classes keep their meaning.
    dense = {id(p) for p in model.net.nodes[-1].parameters()}
    assert all(id(p) not in dense for p in backbone.tuned_parameters())
    with pytest.raises(ImportFailed, match="block_13_expand"):
        split(model, names, blocks=4)


def test_a_tiny_fine_tune_reports_exports_and_refuses_stale_heads(tmp_path: Path) -> None:
    model, names = tiny_model()
    repo = tmp_path / "repo"
    # Today's backbone, exported under the name heads will refer to.
    old = export_tuned(tuned_model(split(model, names, 2), name="tiny"), repo, _prototypes())
    backbone = split(model, names, blocks=2)
    before = [p.detach().clone() for p in backbone.tuned_parameters()]
    cfg = JointConfig(epochs=2, batch=4, max_steps=4, seed=0)
    report, _ = compare_methods(backbone, _inputs(backbone), cfg, draws=20)

    assert report["training"]["steps"] == 4
    assert report["training"]["stopped_by"] == "max_steps"
    assert any(
        not torch.equal(a, b) for a, b in zip(before, backbone.tuned_parameters(), strict=True)
    )
    methods = report["results"]["methods"]
    assert set(methods) == {FROZEN, FINETUNED, REFIT}
    assert set(methods[FROZEN]) == {"a", "b", "macro"}
    difference = report["results"]["differences"][DIFFERENCE]
    assert set(difference) == {"image_bootstrap", "group_bootstrap", "value"}
    drift = report["drift"]["reference_images"]
    assert drift["images"] == 4
    assert drift["max_abs_delta_prob"] >= 0
    assert isinstance(report["finetune_wins"], bool)
    out = tmp_path / "out"
    full = {**report, "dataset": {"categories": ["a", "b"]}, "backbone": {"blocks": 2}}
    json.loads(write_json(full, out, "finetune_tiny").read_text())
    assert plot(full, out, "finetune_tiny").stat().st_size > 0
    assert sorted(p.name for p in out.iterdir()) == ["finetune_tiny.json", "finetune_tiny.png"]

    # The tuned network, re-exported under the same name: parity-checked, a new sha256.
    new = export_tuned(tuned_model(backbone, name="tiny"), repo, _prototypes())
    assert new.report.max_probs_diff <= 1e-4
    onnx = new.folder / "1" / "model.onnx"
    assert new.sha256 == hashlib.sha256(onnx.read_bytes()).hexdigest() != old.sha256
    config = read_config(new.folder / "config.pbtxt")
    assert config.name == "nsfw_tiny"
    assert config.parameters[BACKBONE_SHA_PARAMETER].string_value == new.sha256
    # It says what it is: derived, not the imported weights.
    assert config.parameters["modstream.source"].string_value.startswith("fine-tuned from nsfwjs")
    assert "a derived model" in (new.folder / "config.pbtxt").read_text().splitlines()[0]

    # Heads trained on the old backbone: Triton's heads model refuses to load them...
    heads_dir = repo / "heads"
    for version, sha in (("1", old.sha256), ("2", new.sha256)):
        folder = heads_dir / version
        folder.mkdir(parents=True)
        np.savez(
            folder / "heads.npz",
            weight=np.zeros((DIM, 1), np.float32),
            bias=np.zeros(1, np.float32),
            normalize=np.zeros(1, bool),
        )
        (folder / "heads.json").write_text(
            json.dumps(
                {
                    "heads_model": "heads",
                    "version": version,
                    "backbone": "nsfw_tiny",
                    "backbone_sha256": sha,
                    "embedding_dim": DIM,
                    "categories": [{"name": "a"}],
                    "trained_at": "2026-01-01T00:00:00Z",
                }
            )
        )
    args = {"model_repository": str(heads_dir)}
    with pytest.raises(RuntimeError, match="retrain the heads"):
        TritonPythonModel().initialize({**args, "model_version": "1"})
    TritonPythonModel().initialize({**args, "model_version": "2"})
    # ... and so does the consumer, should such a version serve anyway.
    stale = HeadsDescriptor.model_validate_json((heads_dir / "1" / "heads.json").read_text())
    with pytest.raises(ModelMismatch, match="retrain the heads"):
        stale.check_backbone(new.sha256)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--data", "no/such/dir"], "no such file or folder"),
        (["--data", ".", "--blocks", "9"], "--blocks must be between 1 and 4"),
        (["--data", ".", "--minutes", "0"], "--minutes must be > 0"),
        (["--data", ".", "--name", "../heads"], "must start with 'finetune'"),
    ],
)
def test_bad_input_exits_2_with_one_line(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err
    assert err.count("\n") == 1
