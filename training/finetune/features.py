"""Decoded images and the frozen stem's activations for them, computed once and cached.

Images are decoded as the consumer decodes them (``decode_image`` at the input size, default
limits), so the tail trains on what Triton would see. The stem is frozen, so its output is a
fixed function of the image: it is computed once per image (the expensive part of the
network) and cached under ``.cache/finetune`` keyed by the pinned tarball, the cut and the
images' sha256, and training runs only the tail.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch

from consumer.errors import EventRejected
from consumer.imaging.decode import ImageLimits, decode_image
from consumer.runtime.settings import ImagingSettings
from training.finetune.split import SplitBackbone
from training.heads.embed import TrainingFailed
from training.heads.fit import one_torch_thread

logger = logging.getLogger(__name__)

Floats = npt.NDArray[np.float32]
BATCH = 16


def decode_all(images: Sequence[bytes], size: int, sources: Sequence[str]) -> npt.NDArray[np.uint8]:
    """uint8 NHWC pixels of every image; raises TrainingFailed naming the first refused one."""
    limits = ImageLimits.from_settings(ImagingSettings())
    pixels = []
    for data, source in zip(images, sources, strict=True):
        try:
            pixels.append(decode_image(data, size, limits).pixels)
        except EventRejected as exc:
            raise TrainingFailed(f"{source}: the consumer's decode refuses it ({exc})") from exc
    return np.stack(pixels)


def stem_activations(
    backbone: SplitBackbone, pixels: npt.NDArray[np.uint8], batch: int = BATCH
) -> Floats:
    """The frozen stem's output for uint8 NHWC images, in batches, without gradients."""
    divisor = backbone.model.cfg.input_divisor
    rows = []
    with torch.no_grad(), one_torch_thread():
        for start in range(0, len(pixels), batch):
            chunk = torch.from_numpy(pixels[start : start + batch]).to(torch.float32) / divisor
            (activation,) = backbone.stem(chunk)
            rows.append(activation.numpy())
    result: Floats = np.concatenate(rows).astype(np.float32)
    return result


def cache_key(backbone: SplitBackbone, images: Sequence[bytes], model_key: str) -> str:
    digest = hashlib.sha256(f"{model_key}:{backbone.boundary}".encode())
    for image in images:
        digest.update(hashlib.sha256(image).digest())
    return digest.hexdigest()[:24]


def cached_activations(
    backbone: SplitBackbone,
    images: Sequence[bytes],
    sources: Sequence[str],
    *,
    cache_dir: Path | None,
    model_key: str,
) -> Floats:
    """Stem activations of ``images``, from ``cache_dir`` when an earlier run left them."""
    path = None
    if cache_dir is not None:
        path = cache_dir / f"stem-{cache_key(backbone, images, model_key)}.npy"
        if path.is_file():
            try:
                stored: Floats = np.load(path, allow_pickle=False)
            except (OSError, ValueError) as exc:
                # Only a shortcut: a damaged file is recomputed, not trusted.
                logger.warning("ignoring unreadable activation cache %s: %s", path, exc)
            else:
                if len(stored) == len(images):
                    logger.info("stem activations of %d images from %s", len(images), path)
                    return stored
    started = time.perf_counter()
    pixels = decode_all(images, backbone.model.cfg.input_size, sources)
    activations = stem_activations(backbone, pixels)
    logger.info(
        "stem activations of %d images in %.1f s (%s each)",
        len(images),
        time.perf_counter() - started,
        "x".join(str(d) for d in activations.shape[1:]),
    )
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.stem}.{os.getpid()}.npy")
        np.save(partial, activations)
        os.replace(partial, path)
    return activations
