"""The generated model repository, served by the real tritonserver through the CPU stand-in."""

from __future__ import annotations

import shutil
import threading
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
import torch
import tritonclient.grpc as grpcclient
from prometheus_client.parser import text_string_to_metric_families
from tritonclient.utils import InferenceServerException

from bench.local.triton import TritonServer
from bench.samples import photos, standins
from consumer.errors import LocalServiceError
from consumer.imaging.decode import ImageLimits, decode_image
from consumer.runtime.settings import ImagingSettings
from tests.integration.conftest import SERVED_MODEL
from tests.support.paths import TRITON_REPO
from training.nsfwjs import load
from training.nsfwjs.models import CATEGORIES, Uint8NsfwModel

pytestmark = pytest.mark.integration

MODEL = "mobilenet_v2"
PROBS_TOLERANCE = 1e-4
EMBEDDING_TOLERANCE = 1e-3

UInt8Array = npt.NDArray[np.uint8]
Float32Array = npt.NDArray[np.float32]


@pytest.fixture(scope="module")
def eager() -> Uint8NsfwModel:
    return load(MODEL).uint8_input()


@pytest.fixture(scope="module")
def pool() -> UInt8Array:
    """Photos and stand-ins as the consumer decodes them: uint8 [14, 224, 224, 3]."""
    limits = ImageLimits.from_settings(ImagingSettings())
    return np.stack([decode_image(s.data, 224, limits).pixels for s in [*photos(), *standins()]])


@pytest.fixture
def client(triton: TritonServer) -> Iterator[grpcclient.InferenceServerClient]:
    triton_client = grpcclient.InferenceServerClient(triton.grpc_url)
    yield triton_client
    triton_client.close()


def _reference(eager: Uint8NsfwModel, images: UInt8Array) -> tuple[Float32Array, Float32Array]:
    with torch.no_grad():
        probs, embedding = eager(torch.from_numpy(np.ascontiguousarray(images)))
    return probs.numpy(), embedding.numpy()


def _infer(
    client: grpcclient.InferenceServerClient, images: npt.NDArray[Any], datatype: str = "UINT8"
) -> tuple[Float32Array, Float32Array]:
    image = grpcclient.InferInput("image", list(images.shape), datatype)
    image.set_data_from_numpy(images)
    result = client.infer(
        SERVED_MODEL,
        [image],
        outputs=[
            grpcclient.InferRequestedOutput("probs"),
            grpcclient.InferRequestedOutput("embedding"),
        ],
    )
    return result.as_numpy("probs"), result.as_numpy("embedding")


def _model_counters(server: TritonServer) -> dict[str, float]:
    with urllib.request.urlopen(server.metrics_url, timeout=5) as response:
        text = response.read().decode()
    # Keyed by family name: the parser appends "_total" to the sample names of counters.
    counters: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.labels.get("model") == SERVED_MODEL:
                counters[family.name] = counters.get(family.name, 0.0) + sample.value
    return counters


def _top_category(probs: Float32Array) -> str:
    return list(CATEGORIES.values())[int(np.argmax(probs))]


def test_server_and_model_are_ready(
    triton: TritonServer, client: grpcclient.InferenceServerClient
) -> None:
    assert triton.running()
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready(SERVED_MODEL)
    assert triton.startup_s is not None


def test_metadata_and_config_describe_the_interface(
    client: grpcclient.InferenceServerClient,
) -> None:
    metadata = client.get_model_metadata(SERVED_MODEL)
    inputs = {t.name: (t.datatype, list(t.shape)) for t in metadata.inputs}
    outputs = {t.name: (t.datatype, list(t.shape)) for t in metadata.outputs}
    assert inputs == {"image": ("UINT8", [-1, 224, 224, 3])}
    assert outputs == {
        "probs": ("FP32", [-1, 5]),
        "embedding": ("FP32", [-1, 1280]),
        "prototype_similarity": ("FP32", [-1, 5]),
    }

    config = client.get_model_config(SERVED_MODEL).config
    assert config.backend == "onnxruntime"
    assert config.max_batch_size == 32
    parameters = {key: value.string_value for key, value in config.parameters.items()}
    assert parameters["modstream.class_names"] == ",".join(CATEGORIES.values())
    assert parameters["modstream.input_size"] == "224"
    assert parameters["modstream.license"] == "MIT"


def test_inference_matches_the_eager_model(
    client: grpcclient.InferenceServerClient, eager: Uint8NsfwModel, pool: UInt8Array
) -> None:
    noise = np.random.default_rng(3).integers(0, 256, size=(2, 224, 224, 3), dtype=np.uint8)
    images = np.concatenate([pool, noise])

    probs, embedding = _infer(client, images)

    want_probs, want_embedding = _reference(eager, images)
    assert probs.dtype == np.float32
    assert probs.shape == (len(images), 5)
    assert embedding.shape == (len(images), 1280)
    np.testing.assert_allclose(probs, want_probs, rtol=0, atol=PROBS_TOLERANCE)
    np.testing.assert_allclose(embedding, want_embedding, rtol=0, atol=EMBEDDING_TOLERANCE)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=0, atol=1e-5)


@pytest.mark.parametrize(
    ("name", "category"),
    [
        ("explicit-high", "sexual_explicit"),
        ("drawn-high", "sexual_explicit_drawn"),
        ("suggestive-high", "suggestive"),
    ],
)
def test_stand_ins_score_as_they_were_made_to(
    client: grpcclient.InferenceServerClient, name: str, category: str
) -> None:
    sample = next(s for s in standins() if s.name == name)
    pixels = decode_image(sample.data, 224, ImageLimits.from_settings(ImagingSettings())).pixels
    probs, _ = _infer(client, pixels[None])

    assert _top_category(probs[0]) == category
    assert sample.expected is not None
    assert probs[0].max() == pytest.approx(sample.expected[category], abs=PROBS_TOLERANCE)


def test_every_stand_in_scores_as_its_manifest_says(
    client: grpcclient.InferenceServerClient,
) -> None:
    samples = standins()
    limits = ImageLimits.from_settings(ImagingSettings())
    pixels = np.stack([decode_image(s.data, 224, limits).pixels for s in samples])
    probs, _ = _infer(client, pixels)
    for sample, row in zip(samples, probs, strict=True):
        assert sample.expected is not None
        want = [sample.expected[category] for category in CATEGORIES.values()]
        np.testing.assert_allclose(row, want, rtol=0, atol=2e-4, err_msg=sample.name)


def test_classification_extension_uses_the_labels_file(
    client: grpcclient.InferenceServerClient, pool: UInt8Array
) -> None:
    explicit = len(photos())  # the first stand-in is explicit-high
    image = grpcclient.InferInput("image", [1, 224, 224, 3], "UINT8")
    image.set_data_from_numpy(pool[explicit : explicit + 1])
    result = client.infer(
        SERVED_MODEL, [image], outputs=[grpcclient.InferRequestedOutput("probs", class_count=1)]
    )
    score, index, label = result.as_numpy("probs")[0][0].decode().split(":")
    assert (index, label) == ("3", "sexual_explicit")
    assert float(score) > 0.9


@pytest.mark.parametrize(
    ("shape", "datatype"),
    [
        pytest.param([1, 224, 224, 4], "UINT8", id="four-channels"),
        pytest.param([1, 100, 100, 3], "UINT8", id="wrong-size"),
        pytest.param([1, 224, 224, 3], "FP32", id="float-pixels"),
        pytest.param([33, 224, 224, 3], "UINT8", id="over-max-batch"),
    ],
)
def test_malformed_request_is_rejected_and_server_stays_healthy(
    client: grpcclient.InferenceServerClient,
    pool: UInt8Array,
    shape: list[int],
    datatype: str,
) -> None:
    data = np.zeros(shape, dtype=np.float32 if datatype == "FP32" else np.uint8)

    with pytest.raises(InferenceServerException) as caught:
        _infer(client, data, datatype)

    assert caught.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert client.is_server_ready()
    probs, _ = _infer(client, pool[:1])
    assert _top_category(probs[0]) == "safe"


def test_concurrent_requests_are_batched_and_answered_individually(
    triton: TritonServer, eager: Uint8NsfwModel, pool: UInt8Array
) -> None:
    threads, calls = 8, 12
    # Every request carries its own images (a pool image shifted in brightness) and its own
    # batch size, so an answer routed to the wrong request, or split at the wrong row, shows.
    rng = np.random.default_rng(7)

    def request(size: int) -> UInt8Array:
        rows = rng.integers(0, len(pool), size=size)
        shift = rng.integers(-60, 60, size=(size, 1, 1, 1))
        shifted: UInt8Array = np.clip(pool[rows].astype(np.int16) + shift, 0, 255).astype(np.uint8)
        return shifted

    requests = [[request(1 + (t + c) % 3) for c in range(calls)] for t in range(threads)]
    before = _model_counters(triton)
    start = threading.Barrier(threads)

    def worker(batches: list[UInt8Array]) -> list[Float32Array]:
        worker_client = grpcclient.InferenceServerClient(triton.grpc_url)
        try:
            start.wait()
            return [_infer(worker_client, batch)[0] for batch in batches]
        finally:
            worker_client.close()

    with ThreadPoolExecutor(max_workers=threads) as executor:
        answers = list(executor.map(worker, requests))

    everything = np.concatenate([batch for batches in requests for batch in batches])
    want = iter(_reference(eager, everything)[0])
    for probs_list in answers:
        for probs in probs_list:
            for row in probs:
                np.testing.assert_allclose(row, next(want), rtol=0, atol=PROBS_TOLERANCE)
    after = _model_counters(triton)
    executions = after["nv_inference_exec_count"] - before.get("nv_inference_exec_count", 0.0)
    assert after["nv_inference_count"] - before.get("nv_inference_count", 0.0) == len(everything)
    assert (
        after["nv_inference_request_success"] - before.get("nv_inference_request_success", 0.0)
        == threads * calls
    )
    # Fewer model executions than requests means the dynamic batcher merged some of them.
    assert executions < threads * calls


def test_kill_and_restart_come_back_on_the_same_ports(tmp_path: Path, pool: UInt8Array) -> None:
    with TritonServer(TRITON_REPO, work_dir=tmp_path / "work", models=[SERVED_MODEL]) as server:
        ports = (server.grpc_port, server.http_port, server.metrics_port)
        old_pid = server.pid

        server.kill()
        assert not server.running()
        server.restart(deadline_s=60)

        assert (server.grpc_port, server.http_port, server.metrics_port) == ports
        assert server.pid != old_pid
        restarted = grpcclient.InferenceServerClient(server.grpc_url)
        try:
            assert restarted.is_model_ready(SERVED_MODEL)
            probs, _ = _infer(restarted, pool[:1])
        finally:
            restarted.close()
        assert _top_category(probs[0]) == "safe"
    assert not server.running()


def test_model_that_cannot_load_fails_start_with_the_log(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(TRITON_REPO / SERVED_MODEL, repo / SERVED_MODEL)
    (repo / SERVED_MODEL / "1" / "model.onnx").write_bytes(b"not an onnx file")

    server = TritonServer(repo, work_dir=tmp_path / "work")
    with pytest.raises(LocalServiceError, match="exited before ready") as caught, server:
        pytest.fail("the server should not have become ready")

    assert SERVED_MODEL in str(caught.value)
    assert not server.running()
