"""The committed model repository, served by the real tritonserver through the CPU stand-in."""

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
import skimage.data
import tritonclient.grpc as grpcclient
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families
from tritonclient.utils import InferenceServerException

from consumer.errors import LocalServiceError
from consumer.local.triton import TritonServer
from training import placeholder
from training.placeholder import CLASS_NAMES, MODEL_NAME, reference_forward, solid_image

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2] / "triton_repo"
TOLERANCE = 1e-5

UInt8Array = npt.NDArray[np.uint8]


@pytest.fixture(scope="module")
def server() -> Iterator[TritonServer]:
    with TritonServer(REPO) as triton:
        yield triton


@pytest.fixture
def client(server: TritonServer) -> Iterator[grpcclient.InferenceServerClient]:
    triton_client = grpcclient.InferenceServerClient(server.grpc_url)
    yield triton_client
    triton_client.close()


def _photo(name: str) -> UInt8Array:
    pixels = getattr(skimage.data, name)()
    resized = Image.fromarray(pixels).convert("RGB").resize((224, 224), Image.Resampling.BILINEAR)
    return np.asarray(resized, dtype=np.uint8)


def _infer(
    client: grpcclient.InferenceServerClient, images: npt.NDArray[Any], datatype: str = "UINT8"
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    image = grpcclient.InferInput("image", list(images.shape), datatype)
    image.set_data_from_numpy(images)
    result = client.infer(
        MODEL_NAME,
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
            if sample.labels.get("model") == MODEL_NAME:
                counters[family.name] = counters.get(family.name, 0.0) + sample.value
    return counters


def test_server_and_model_are_ready(
    server: TritonServer, client: grpcclient.InferenceServerClient
) -> None:
    assert server.running()
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready(MODEL_NAME)
    assert server.startup_s is not None


def test_metadata_and_config_describe_the_interface(
    client: grpcclient.InferenceServerClient,
) -> None:
    metadata = client.get_model_metadata(MODEL_NAME)
    inputs = {t.name: (t.datatype, list(t.shape)) for t in metadata.inputs}
    outputs = {t.name: (t.datatype, list(t.shape)) for t in metadata.outputs}
    assert inputs == {"image": ("UINT8", [-1, 224, 224, 3])}
    assert outputs == {"probs": ("FP32", [-1, 5]), "embedding": ("FP32", [-1, 16])}

    config = client.get_model_config(MODEL_NAME).config
    assert config.backend == "onnxruntime"
    assert config.max_batch_size == 32
    parameters = {key: value.string_value for key, value in config.parameters.items()}
    assert parameters == {
        "modstream.class_names": ",".join(CLASS_NAMES),
        "modstream.input_size": "224",
        "modstream.resize": "stretch_bilinear",
        "modstream.placeholder": "true",
    }


def test_inference_matches_the_numpy_reference(client: grpcclient.InferenceServerClient) -> None:
    photos = [_photo(name) for name in ("astronaut", "coffee", "chelsea", "rocket")]
    solids = [solid_image(rgb) for rgb, _ in placeholder.SOLID_COLOURS.values()]
    images = np.stack([*photos, *solids, solid_image((255, 128, 0))])

    probs, embedding = _infer(client, images)

    want_probs, want_embedding = reference_forward(images)
    assert probs.dtype == np.float32
    assert probs.shape == (len(images), 5)
    assert embedding.shape == (len(images), 16)
    np.testing.assert_allclose(probs, want_probs, rtol=0, atol=TOLERANCE)
    np.testing.assert_allclose(embedding, want_embedding, rtol=0, atol=TOLERANCE)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=0, atol=1e-5)


@pytest.mark.parametrize(
    ("colour", "expected"),
    [
        ((255, 0, 0), "porn"),
        ((0, 255, 0), "neutral"),
        ((0, 0, 255), "drawing"),
        ((255, 255, 0), "sexy"),
        ((255, 0, 255), "hentai"),
    ],
)
def test_solid_colours_get_their_class_confidently(
    client: grpcclient.InferenceServerClient, colour: tuple[int, int, int], expected: str
) -> None:
    probs, _ = _infer(client, solid_image(colour)[None])

    assert CLASS_NAMES[int(np.argmax(probs[0]))] == expected
    assert probs[0].max() > 0.8


def test_grey_is_spread_out(client: grpcclient.InferenceServerClient) -> None:
    probs, _ = _infer(client, solid_image((128, 128, 128))[None])

    assert CLASS_NAMES[int(np.argmax(probs[0]))] == "neutral"
    assert probs[0].max() < 0.5
    assert probs[0].min() > 0.1


def test_classification_extension_uses_the_labels_file(
    client: grpcclient.InferenceServerClient,
) -> None:
    image = grpcclient.InferInput("image", [1, 224, 224, 3], "UINT8")
    image.set_data_from_numpy(solid_image((255, 0, 0))[None])
    result = client.infer(
        MODEL_NAME, [image], outputs=[grpcclient.InferRequestedOutput("probs", class_count=1)]
    )
    score, index, label = result.as_numpy("probs")[0][0].decode().split(":")
    assert (index, label) == ("3", "porn")
    assert float(score) > 0.8


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
    client: grpcclient.InferenceServerClient, shape: list[int], datatype: str
) -> None:
    data = np.zeros(shape, dtype=np.float32 if datatype == "FP32" else np.uint8)

    with pytest.raises(InferenceServerException) as caught:
        _infer(client, data, datatype)

    assert caught.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert client.is_server_ready()
    probs, _ = _infer(client, solid_image((0, 255, 0))[None])
    assert CLASS_NAMES[int(np.argmax(probs[0]))] == "neutral"


def test_concurrent_requests_are_batched_and_answered_individually(
    server: TritonServer,
) -> None:
    threads, calls = 8, 12
    # Every request carries different pixels and its own batch size, so an answer routed to
    # the wrong request, or split at the wrong row, shows up as a mismatch.
    rng = np.random.default_rng(7)
    requests = [
        [
            rng.integers(0, 256, size=(1 + (t + c) % 3, 1, 1, 3), dtype=np.uint8)
            * np.ones((1, 224, 224, 3), dtype=np.uint8)
            for c in range(calls)
        ]
        for t in range(threads)
    ]
    before = _model_counters(server)
    start = threading.Barrier(threads)

    def worker(batches: list[UInt8Array]) -> list[npt.NDArray[np.float32]]:
        worker_client = grpcclient.InferenceServerClient(server.grpc_url)
        try:
            start.wait()
            return [_infer(worker_client, batch)[0] for batch in batches]
        finally:
            worker_client.close()

    with ThreadPoolExecutor(max_workers=threads) as pool:
        answers = list(pool.map(worker, requests))

    for batches, probs_list in zip(requests, answers, strict=True):
        for batch, probs in zip(batches, probs_list, strict=True):
            np.testing.assert_allclose(probs, reference_forward(batch)[0], rtol=0, atol=TOLERANCE)
    after = _model_counters(server)
    images = sum(len(batch) for batches in requests for batch in batches)
    executions = after["nv_inference_exec_count"] - before.get("nv_inference_exec_count", 0.0)
    assert after["nv_inference_count"] - before.get("nv_inference_count", 0.0) == images
    assert (
        after["nv_inference_request_success"] - before.get("nv_inference_request_success", 0.0)
        == threads * calls
    )
    # Fewer model executions than requests means the dynamic batcher merged some of them.
    assert executions < threads * calls


def test_kill_and_restart_come_back_on_the_same_ports(tmp_path: Path) -> None:
    with TritonServer(REPO, work_dir=tmp_path / "work") as triton:
        ports = (triton.grpc_port, triton.http_port, triton.metrics_port)
        old_pid = triton.pid

        triton.kill()
        assert not triton.running()
        triton.restart(deadline_s=60)

        assert (triton.grpc_port, triton.http_port, triton.metrics_port) == ports
        assert triton.pid != old_pid
        restarted = grpcclient.InferenceServerClient(triton.grpc_url)
        try:
            assert restarted.is_model_ready(MODEL_NAME)
            probs, _ = _infer(restarted, solid_image((0, 0, 255))[None])
        finally:
            restarted.close()
        assert CLASS_NAMES[int(np.argmax(probs[0]))] == "drawing"
    assert not triton.running()


def test_model_that_cannot_load_fails_start_with_the_log(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(REPO, repo)
    (repo / MODEL_NAME / "1" / "model.onnx").write_bytes(b"not an onnx file")

    triton = TritonServer(repo, work_dir=tmp_path / "work")
    with pytest.raises(LocalServiceError, match="exited before ready") as caught, triton:
        pytest.fail("the server should not have become ready")

    assert MODEL_NAME in str(caught.value)
    assert not triton.running()
