"""The GPU deployment validated offline (docs/gpu.md): the overlays render and validate, the
Triton pod's init container assembles a model repository whose every config parses with
Triton's model-config protobuf, the bytes ensemble chains and keeps the CPU contract, the
DALI step matches its pipeline, and the backbone's TensorRT and fp32 configs say what they
claim. Nothing here needs a GPU; what only a GPU can show is bench/gpu_preprocess.py's job.
"""

from __future__ import annotations

import ast
import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as pb

from consumer.inference.ensemble import ensemble_config, heads_config, read_config, render
from tests.support.kustomize_lite import render as render_overlay
from tests.support.paths import DEPLOY, REPO_ROOT
from tests.unit.deploy.test_deploy import (
    _by_kind,
)
from training.nsfwjs.export import triton_config
from training.nsfwjs.models import get_config
from training.prototypes import Prototypes

GPU = DEPLOY / "triton-gpu"
BACKBONE = "nsfw_mobilenet_v2"
STATUS_OUTPUTS = ("preprocess_status", "preprocess_detail")
# The TensorRT execution accelerator's parameters in Triton 24.10's onnxruntime backend
# (triton-inference-server/onnxruntime_backend, branch r24.10, src/onnxruntime.cc); any other
# key makes the model fail to load.
TENSORRT_KEYS = frozenset(
    {
        "precision_mode",
        "max_workspace_size_bytes",
        "trt_max_partition_iterations",
        "trt_min_subgraph_size",
        "int8_calibration_table_name",
        "int8_use_native_calibration_table",
        "trt_dla_enable",
        "trt_dla_core",
        "trt_engine_cache_enable",
        "trt_engine_cache_path",
        "trt_engine_cache_prefix",
        "trt_dump_subgraphs",
        "trt_force_sequential_engine_build",
        "trt_context_memory_sharing_enable",
        "trt_layer_norm_fp32_fallback",
        "trt_timing_cache_enable",
        "trt_timing_cache_path",
        "trt_force_timing_cache",
        "trt_detailed_build_log",
        "trt_build_heuristics_enable",
        "trt_sparsity_enable",
        "trt_builder_optimization_level",
        "trt_auxiliary_streams",
        "trt_tactic_sources",
        "trt_extra_plugin_lib_paths",
        "trt_profile_min_shapes",
        "trt_profile_max_shapes",
        "trt_profile_opt_shapes",
        "trt_cuda_graph_enable",
        "trt_dump_ep_context_model",
        "trt_ep_context_file_path",
        "trt_ep_context_embed_mode",
    }
)
TENSORRT_PRECISIONS = frozenset({"FP32", "FP16", "INT8"})

Config = Any
Tensor = tuple[int, list[int]]


def _load_assembler() -> ModuleType:
    spec = importlib.util.spec_from_file_location("triton_gpu_assemble", GPU / "assemble.py")
    if spec is None or spec.loader is None:
        raise RuntimeError(f"cannot load {GPU / 'assemble.py'}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


assembler = _load_assembler()


def _triton_pod(overlay: str) -> dict[str, Any]:
    deployment = _by_kind(
        render_overlay(DEPLOY / "overlays" / overlay), "Deployment", "modstream-triton"
    )
    pod: dict[str, Any] = deployment["spec"]["template"]["spec"]
    return pod


def _assembly_container(pod: dict[str, Any]) -> dict[str, Any]:
    return next(c for c in pod["initContainers"] if c["name"] == "gpu-model-configs")


# ── the CPU repository the init container starts from ──────────────────────────────────


def cpu_backbone(name: str = "mobilenet_v2") -> Config:
    """The backbone config exactly as the export writes it (no weights needed)."""
    prototypes = Prototypes(
        matrix=np.zeros((5, 1), dtype=np.float32),
        counts={"safe_drawing": 48, "safe": 56},
        source="builtin",
    )
    text = triton_config(get_config(name), prototypes, "0" * 64)
    return text_format.Parse(text, pb.ModelConfig())


def cpu_preprocess() -> Config:
    """The CPU ``preprocess`` step's contract: image bytes in, a 224 x 224 image and a status
    per image out, the consumer's limits as parameters."""
    config = pb.ModelConfig(name="preprocess", backend="python", max_batch_size=32)
    config.input.add(name="image_bytes", data_type=pb.TYPE_STRING, dims=[1])
    config.output.add(name="image", data_type=pb.TYPE_UINT8, dims=[224, 224, 3])
    for name in STATUS_OUTPUTS:
        config.output.add(name=name, data_type=pb.TYPE_STRING, dims=[1])
    config.dynamic_batching.SetInParent()
    config.instance_group.add(kind=pb.ModelInstanceGroup.KIND_CPU, count=2)
    for key, value in {
        "modstream.input_size": "224",
        "modstream.max_image_bytes": "20971520",
        "modstream.max_pixels": "64000000",
        "modstream.max_decode_bytes": "268435456",
    }.items():
        config.parameters[key].string_value = value
    return config


def write_config(repo: Path, config: Config) -> None:
    (repo / config.name / "1").mkdir(parents=True, exist_ok=True)
    (repo / config.name / "config.pbtxt").write_text(render(config))


def cpu_repository(repo: Path, preprocess: Config) -> Path:
    backbone = cpu_backbone()
    write_config(repo, backbone)
    write_config(repo, preprocess)
    write_config(repo, heads_config(backbone, "heads"))
    write_config(repo, ensemble_config(backbone, "heads", "1"))
    return repo


def assemble_as_deployed(repo: Path, *extra: str) -> None:
    """Run assemble.py with the init container's own arguments, its mounts mapped to
    ``repo`` and to deploy/triton-gpu."""
    container = _assembly_container(_triton_pod("gpu"))
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    places = {mounts["models"]: str(repo), mounts["triton-gpu"]: str(GPU)}
    args = [*container["args"], *extra]
    for mounted, local in places.items():
        args = [arg.replace(f"={mounted}", f"={local}") for arg in args]
    if assembler.main(args) != 0:
        pytest.fail(f"assemble.py {args} failed")


@pytest.fixture(scope="module", params=["contract", "repository"])
def gpu_repo(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The assembled GPU repository, from the CPU preprocess contract and, when the
    repository has it, from triton_repo's own preprocess config."""
    if request.param == "contract":
        preprocess = cpu_preprocess()
    else:
        path = REPO_ROOT / "triton_repo" / "preprocess" / "config.pbtxt"
        if not path.is_file():
            pytest.skip(f"{path} is not there")
        preprocess = read_config(path)
    repo = cpu_repository(tmp_path_factory.mktemp(f"models-{request.param}"), preprocess)
    assemble_as_deployed(repo, "--target=moderation")
    return repo


# ── the chain ──────────────────────────────────────────────────────────────────────────


def _tensors(tensors: Any) -> dict[str, Tensor]:
    return {t.name: (t.data_type, list(t.dims)) for t in tensors}


def chain_problems(ensemble: Config, repo: Path) -> list[str]:
    """Whatever keeps the ensemble's steps from chaining: a step input that is neither an
    ensemble input nor an earlier step's output, a type or shape that differs between
    producer and consumer, a model input left unfed, an ensemble output nothing produces."""
    available = _tensors(ensemble.input)
    problems = []
    for step in ensemble.ensemble_scheduling.step:
        model = read_config(repo / step.model_name / "config.pbtxt")
        inputs, outputs = _tensors(model.input), _tensors(model.output)
        for key, tensor in step.input_map.items():
            if key not in inputs:
                problems.append(f"{step.model_name} has no input {key!r}")
            elif tensor not in available:
                problems.append(f"{step.model_name}.{key} reads {tensor!r}, produced by nothing")
            elif available[tensor] != inputs[key]:
                taken = f"{step.model_name}.{key} takes {inputs[key]}"
                problems.append(f"{tensor!r} is {available[tensor]}, {taken}")
        problems += [
            f"{step.model_name}.{key} is not fed" for key in set(inputs) - set(step.input_map)
        ]
        for key, tensor in step.output_map.items():
            if key not in outputs:
                problems.append(f"{step.model_name} has no output {key!r}")
            else:
                available[tensor] = outputs[key]
    for name, tensor in _tensors(ensemble.output).items():
        if available.get(name) != tensor:
            problems.append(
                f"ensemble output {name!r} {tensor} is produced as {available.get(name)}"
            )
    return problems


def test_every_gpu_config_parses(gpu_repo: Path) -> None:
    for path in sorted(GPU.glob("*.pbtxt")):
        read_config(path)
    assembled = sorted([*gpu_repo.glob("*/config.pbtxt"), *gpu_repo.glob("*/configs/*.pbtxt")])
    names = [p.relative_to(gpu_repo).as_posix() for p in assembled]
    assert f"{BACKBONE}/configs/fp32.pbtxt" in names
    for path in assembled:
        # Triton requires a config's name to be its model's folder's.
        model = path.parent.parent if path.parent.name == "configs" else path.parent
        assert read_config(path).name == model.name, path


@pytest.mark.parametrize("target", [BACKBONE, "moderation"])
def test_the_bytes_ensemble_chains(gpu_repo: Path, target: str) -> None:
    ensemble = read_config(gpu_repo / f"{target}_bytes" / "config.pbtxt")
    steps = [step.model_name for step in ensemble.ensemble_scheduling.step]
    assert steps == ["preprocess", "preprocess_dali", target]
    assert chain_problems(ensemble, gpu_repo) == []
    assert (gpu_repo / f"{target}_bytes" / "1").is_dir()


def test_the_chain_check_finds_a_break(gpu_repo: Path, tmp_path: Path) -> None:
    shutil.copytree(gpu_repo, tmp_path / "repo")
    dali = read_config(tmp_path / "repo" / "preprocess_dali" / "config.pbtxt")
    dali.output[0].dims[0] = 299
    write_config(tmp_path / "repo", dali)
    ensemble = read_config(tmp_path / "repo" / f"{BACKBONE}_bytes" / "config.pbtxt")
    ensemble.ensemble_scheduling.step[0].input_map["image_bytes"] = "encoded"
    problems = chain_problems(ensemble, tmp_path / "repo")
    assert any("'encoded', produced by nothing" in p for p in problems)
    assert any("'decoded_image'" in p and "takes" in p for p in problems)


def test_the_gpu_bytes_ensemble_keeps_the_cpu_contract(gpu_repo: Path) -> None:
    backbone = read_config(gpu_repo / BACKBONE / "config.pbtxt")
    ensemble = read_config(gpu_repo / f"{BACKBONE}_bytes" / "config.pbtxt")
    string = (pb.TYPE_STRING, [1])
    assert ensemble.platform == "ensemble"
    assert ensemble.max_batch_size == 32
    assert _tensors(ensemble.input) == {"image_bytes": string}
    expected = {
        "probs": (pb.TYPE_FP32, [5]),
        "embedding": (pb.TYPE_FP32, [1280]),
        "prototype_similarity": (pb.TYPE_FP32, [5]),
        "preprocess_status": string,
        "preprocess_detail": string,
    }
    assert _tensors(ensemble.output) == expected
    assert not any(t.label_filename for t in ensemble.output)
    parameters = {k: v.string_value for k, v in ensemble.parameters.items()}
    assert parameters["modstream.pixel_model"] == BACKBONE
    assert parameters["modstream.encoded_formats"] == "JPEG,MPO"
    for key, value in backbone.parameters.items():
        assert parameters[key] == value.string_value, key
    moderation = read_config(gpu_repo / "moderation_bytes" / "config.pbtxt")
    assert set(_tensors(moderation.output)) == {*expected, "head_scores", "heads_descriptor"}


def test_the_check_only_step_hands_dali_padded_bytes(gpu_repo: Path) -> None:
    check = read_config(gpu_repo / "preprocess" / "config.pbtxt")
    dali = read_config(gpu_repo / "preprocess_dali" / "config.pbtxt")
    parameters = {k: v.string_value for k, v in check.parameters.items()}
    assert parameters["modstream.decode"] == "false"
    assert _tensors(check.input) == {"image_bytes": (pb.TYPE_STRING, [1])}
    assert _tensors(check.output) == {
        "checked_bytes": (pb.TYPE_UINT8, [-1]),
        "preprocess_status": (pb.TYPE_STRING, [1]),
        "preprocess_detail": (pb.TYPE_STRING, [1]),
    }
    # DALI takes encoded images as UINT8 rows only, never as STRING elements.
    assert _tensors(check.output)["checked_bytes"] == _tensors(dali.input)["checked_bytes"]
    # The CPU step's limits and instances are its own; check-only keeps them.
    for key in ("modstream.input_size", "modstream.max_image_bytes", "modstream.max_pixels"):
        assert key in parameters, key
    assert [g.kind for g in check.instance_group] == [pb.ModelInstanceGroup.KIND_CPU]


def _pipeline() -> dict[str, Any]:
    """What deploy/triton-gpu/dali.py declares, read without DALI: its constants, the
    decorators of its pipeline and the keyword arguments of each call."""
    tree = ast.parse((GPU / "dali.py").read_text())
    found: dict[str, Any] = {"calls": {}}
    for statement in tree.body:
        if isinstance(statement, ast.Assign) and isinstance(statement.targets[0], ast.Name):
            found[statement.targets[0].id] = ast.literal_eval(statement.value)
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef):
            found["decorators"] = [ast.unparse(d).split("(")[0] for d in node.decorator_list]
        elif isinstance(node, ast.Call):
            keywords = {k.arg: ast.unparse(k.value) for k in node.keywords if k.arg}
            found["calls"][ast.unparse(node.func)] = keywords
    return found


def test_the_dali_step_matches_its_pipeline(gpu_repo: Path) -> None:
    pipeline = _pipeline()
    dali = read_config(gpu_repo / "preprocess_dali" / "config.pbtxt")
    backbone = read_config(gpu_repo / BACKBONE / "config.pbtxt")
    assert (gpu_repo / "preprocess_dali" / "1" / "dali.py").read_text() == (
        GPU / "dali.py"
    ).read_text()
    # The backend serializes the one pipeline marked @autoserialize.
    assert pipeline["decorators"] == ["autoserialize", "dali.pipeline_def"]
    assert dali.backend == "dali"
    assert [t.name for t in dali.input] == [pipeline["INPUT"]]
    assert pipeline["calls"]["fn.external_source"]["name"] == "INPUT"
    decoder = pipeline["calls"]["fn.decoders.image"]
    assert decoder["device"] == "'mixed'"  # nvJPEG
    assert decoder["output_type"] == "types.RGB"
    assert decoder["adjust_orientation"] == "True"
    resize = pipeline["calls"]["fn.resize"]
    assert resize["resize_x"] == resize["resize_y"] == "SIZE"
    size = pipeline["SIZE"]
    assert _tensors(dali.output) == {"image": (pb.TYPE_UINT8, [size, size, 3])}
    assert _tensors(backbone.input)["image"] == (pb.TYPE_UINT8, [size, size, 3])
    assert dali.max_batch_size == pipeline["MAX_BATCH"] == backbone.max_batch_size
    # One request per DALI batch: a corrupt image fails only the request that carries it.
    assert not dali.HasField("dynamic_batching")
    threads = dali.parameters["num_threads"].string_value
    assert threads == pipeline["calls"]["dali.pipeline_def"]["num_threads"]


def test_the_backbone_runs_as_a_tensorrt_fp16_engine(gpu_repo: Path) -> None:
    cpu = cpu_backbone()
    gpu = read_config(gpu_repo / BACKBONE / "config.pbtxt")
    # Only serving settings change: the export's tensors and parameters stay as they are.
    for field in ("name", "backend", "max_batch_size", "input", "output", "parameters"):
        assert getattr(gpu, field) == getattr(cpu, field), field
    (accelerator,) = gpu.optimization.execution_accelerators.gpu_execution_accelerator
    parameters = dict(accelerator.parameters)
    assert accelerator.name == "tensorrt"
    assert set(parameters) <= TENSORRT_KEYS, set(parameters) - TENSORRT_KEYS
    assert parameters["precision_mode"] in TENSORRT_PRECISIONS
    assert parameters["precision_mode"] == "FP16"
    assert int(parameters["max_workspace_size_bytes"]) > 0
    assert parameters["trt_engine_cache_enable"] == "1"
    (image,) = gpu.input
    shape = "x".join(str(d) for d in image.dims)
    assert parameters["trt_profile_min_shapes"] == f"{image.name}:1x{shape}"
    for key in ("trt_profile_opt_shapes", "trt_profile_max_shapes"):
        assert parameters[key] == f"{image.name}:{gpu.max_batch_size}x{shape}", key
    (warmup,) = gpu.model_warmup
    assert warmup.batch_size == gpu.max_batch_size
    assert {k: list(v.dims) for k, v in warmup.inputs.items()} == {image.name: list(image.dims)}
    assert [g.kind for g in gpu.instance_group] == [pb.ModelInstanceGroup.KIND_GPU]
    assert max(gpu.dynamic_batching.preferred_batch_size) <= gpu.max_batch_size
    # The engine cache is a volume the Triton container can write.
    container = _triton_pod("gpu")["containers"][0]
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    for key in ("trt_engine_cache_path", "trt_timing_cache_path"):
        mount = mounts[parameters[key]]
        assert not mount.get("readOnly"), key


def test_the_fp32_fallback_is_the_same_model_without_tensorrt(gpu_repo: Path) -> None:
    tensorrt = read_config(gpu_repo / BACKBONE / "config.pbtxt")
    fp32 = read_config(gpu_repo / BACKBONE / "configs" / "fp32.pbtxt")
    for field in ("name", "input", "output", "parameters", "instance_group", "dynamic_batching"):
        assert getattr(fp32, field) == getattr(tensorrt, field), field
    (accelerator,) = fp32.optimization.execution_accelerators.gpu_execution_accelerator
    assert accelerator.name == "cuda"
    assert dict(accelerator.parameters) == {"use_tf32": "0"}
    gpu, fallback = _triton_pod("gpu"), _triton_pod("gpu-fp32")
    assert fallback["containers"][0]["args"] == [
        *gpu["containers"][0]["args"],
        "--model-config-name=fp32",
    ]
    fallback["containers"][0]["args"].pop()
    assert fallback == gpu


def test_assembling_again_changes_nothing(gpu_repo: Path, tmp_path: Path) -> None:
    shutil.copytree(gpu_repo, tmp_path / "repo")
    assemble_as_deployed(tmp_path / "repo", "--target=moderation")
    for path in sorted(gpu_repo.rglob("*.pbtxt")):
        again = tmp_path / "repo" / path.relative_to(gpu_repo)
        assert again.read_text() == path.read_text(), path


def test_assembly_refuses_a_backbone_of_another_size(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    repo = cpu_repository(tmp_path, cpu_preprocess())
    write_config(repo, cpu_backbone("inception_v3"))
    args = ["--repository", str(repo), "--gpu", str(GPU)]
    assert assembler.main([*args, "--backbone=nsfw_inception_v3"]) == 1
    assert assembler.main([*args, "--target=nsfw_inception_v3"]) == 1
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2
    assert "nsfw_inception_v3 takes 'image' [299, 299, 3]" in lines[0]
    assert "takes TYPE_UINT8 [299, 299, 3]" in lines[1]


# ── the overlays ───────────────────────────────────────────────────────────────────────


# Rendering and validating both overlays: test_deploy.py (OVERLAYS).


def test_the_triton_pod_assembles_and_loads_the_gpu_models() -> None:
    resources = render_overlay(DEPLOY / "overlays" / "gpu")
    pod = _by_kind(resources, "Deployment", "modstream-triton")["spec"]["template"]["spec"]
    triton = pod["containers"][0]
    assert [c["name"] for c in pod["initContainers"]] == ["model-repository", "gpu-model-configs"]
    init = _assembly_container(pod)
    consumer = _by_kind(resources, "Deployment", "modstream-consumer")
    assert init["image"] == consumer["spec"]["template"]["spec"]["containers"][0]["image"]
    assert init["command"] == ["python", "/etc/modstream/triton-gpu/assemble.py"]
    assert init["securityContext"]["readOnlyRootFilesystem"] is True
    assert init["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert "memory" in init["resources"]["limits"]
    options = [arg.split("=", 1) for arg in init["args"]]
    loaded = {arg.split("=", 1)[1] for arg in triton["args"] if arg.startswith("--load-model=")}
    for option, model in options:
        if option == "--backbone":
            assert model in loaded
        if option == "--target":
            assert {model, f"{model}_bytes", "preprocess", "preprocess_dali"} <= loaded
    assert "--model-control-mode=explicit" in triton["args"]
    assert triton["resources"]["limits"]["nvidia.com/gpu"] == "1"
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["dshm"]["emptyDir"] == {"medium": "Memory", "sizeLimit": "2Gi"}
    # The ConfigMap carries every file of deploy/triton-gpu, unchanged.
    config_map = _by_kind(resources, "ConfigMap", volumes["triton-gpu"]["configMap"]["name"])
    files = {p.name: p.read_text() for p in GPU.iterdir() if p.is_file()}
    del files["kustomization.yaml"]
    assert config_map["data"] == files
    config = next(
        r
        for r in resources
        if r["kind"] == "ConfigMap" and r["metadata"]["name"].startswith("modstream-config")
    )
    assert config["data"]["MODSTREAM_IMAGING__DECODE_IN"] == "triton"


# ── the GPU tools and the docs ─────────────────────────────────────────────────────────


def test_the_gpu_check_exits_2_without_a_gpu() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "bench.gpu_preprocess"],
        cwd=REPO_ROOT,
        env={**os.environ, "CUDA_VISIBLE_DEVICES": ""},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    assert len(result.stderr.splitlines()) == 1
    assert "CUDA" in result.stderr
    assert result.stdout == ""


def test_the_parity_bound_is_the_measured_one() -> None:
    from bench.gpu_preprocess import FP16_MAX_DPROB

    card = (REPO_ROOT / "triton_repo" / "README.md").read_text()
    on_a_gpu = card.split("## On a GPU", 1)[1].split("\n## ", 1)[0]
    assert "fp16 autocast to ≤ 2.4e-3" in on_a_gpu
    assert FP16_MAX_DPROB == 2.4e-3
    for text in (
        (REPO_ROOT / "docs" / "gpu.md").read_text(),
        (GPU / "backbone-tensorrt.pbtxt").read_text(),
    ):
        assert "2.4e-3" in text
        assert "bench.gpu_preprocess" in text
