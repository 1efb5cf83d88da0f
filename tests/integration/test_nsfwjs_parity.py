"""The imported networks reproduce nsfwjs itself: probabilities and embeddings, per image.

``tests/fixtures/nsfwjs/reference.json`` holds what nsfwjs@4.4.0 computed in Node for the PNGs
in ``tests/fixtures/nsfwjs/images/`` (already at each model's input size). The pinned tarball
comes from ``npm pack`` (cached under ``<repo>/.cache/nsfwjs``), so npm must be installed:
without it these tests fail rather than skip.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from tests.support.paths import FIXTURES
from training.nsfwjs import CLASS_NAMES, MODELS, load
from training.nsfwjs.archive import NsfwjsArchive, default_cache_dir, fetch_tarball

pytestmark = pytest.mark.integration

logger = logging.getLogger(__name__)

FIXTURES = FIXTURES / "nsfwjs"
REFERENCE = FIXTURES / "reference.json"
PROB_TOLERANCE = 1e-4
EMBEDDING_TOLERANCE = 1e-4  # relative to max(1, max |reference embedding|)


@pytest.fixture(scope="module")
def reference() -> dict[str, Any]:
    if not REFERENCE.is_file():
        pytest.fail(
            f"{REFERENCE} is missing; generate it with nsfwjs@4.4.0 in Node "
            "(training/nsfwjs/reference/)"
        )
    data: dict[str, Any] = json.loads(REFERENCE.read_text())
    return data


@pytest.fixture(scope="module")
def archive() -> NsfwjsArchive:
    if shutil.which("npm") is None:
        pytest.fail("npm is not on PATH: install Node.js with npm to fetch nsfwjs@4.4.0")
    return NsfwjsArchive.open(fetch_tarball(default_cache_dir()))


def _image(name: str, size: int) -> torch.Tensor:
    path = FIXTURES / "images" / f"{name}_{size}.png"
    if not path.is_file():
        pytest.fail(f"{path} is listed in {REFERENCE.name} but missing")
    with Image.open(path) as image:
        pixels = np.asarray(image.convert("RGB")).copy()
    if pixels.shape != (size, size, 3):
        pytest.fail(f"{path} is {pixels.shape}, not the model input size {size}x{size}")
    return torch.from_numpy(pixels)


def test_reference_uses_the_registry_class_order(reference: dict[str, Any]) -> None:
    assert tuple(reference["classes"]) == CLASS_NAMES
    assert set(reference["models"]) == set(MODELS)


@pytest.mark.parametrize("name", list(MODELS))
def test_probabilities_and_embeddings_match_nsfwjs(
    name: str, reference: dict[str, Any], archive: NsfwjsArchive
) -> None:
    started = time.perf_counter()
    model = load(name, archive=archive)
    load_s = time.perf_counter() - started
    cfg = model.cfg
    expected = reference["models"][name]
    assert expected["input_size"] == cfg.input_size
    images = expected["images"]
    assert images, f"no reference images for {name}"

    names = sorted(images)
    batch = torch.stack([_image(n, cfg.input_size) for n in names])
    started = time.perf_counter()
    with torch.no_grad():
        probs, embedding = model.uint8_input()(batch)
        float_probs, float_embedding = model(batch.to(torch.float32) / 255.0)
    infer_s = time.perf_counter() - started
    assert torch.equal(probs, float_probs)
    assert torch.equal(embedding, float_embedding)

    ref_probs = np.array([images[n]["probs"] for n in names], dtype=np.float64)
    ref_embedding = np.array([images[n]["embedding"] for n in names], dtype=np.float64)
    assert ref_probs.shape == (len(names), len(CLASS_NAMES))
    assert ref_embedding.shape == (len(names), cfg.embedding_dim)
    prob_err = np.abs(probs.numpy() - ref_probs).max(axis=1)
    emb_err = np.abs(embedding.numpy() - ref_embedding).max(axis=1)
    emb_scale = np.maximum(1.0, np.abs(ref_embedding).max(axis=1))
    for i, image in enumerate(names):
        logger.info(
            "%s %s: max|dprob| %.2e, max|dembedding| %.2e (scale %.2f), top-1 %s",
            name,
            image,
            prob_err[i],
            emb_err[i],
            emb_scale[i],
            CLASS_NAMES[int(ref_probs[i].argmax())],
        )
    logger.info(
        "%s: %d images, load %.2f s, inference %.2f s; worst max|dprob| %.2e, "
        "worst max|dembedding| %.2e",
        name,
        len(names),
        load_s,
        infer_s,
        prob_err.max(),
        emb_err.max(),
    )
    bad_probs = [
        f"{n} ({e:.2e})" for n, e in zip(names, prob_err, strict=True) if e > PROB_TOLERANCE
    ]
    bad_embeddings = [
        f"{n} ({e:.2e})"
        for n, e, s in zip(names, emb_err, emb_scale, strict=True)
        if e > EMBEDDING_TOLERANCE * s
    ]
    assert not bad_probs, f"{name}: max |dprob| above {PROB_TOLERANCE}: {bad_probs}"
    assert not bad_embeddings, f"{name}: embedding differs from nsfwjs: {bad_embeddings}"
