"""Embeddings of labelled images, as the served backbone computes them, cached on disk.

Images go through the consumer's own decode (``consumer.imaging.decode.decode_image`` at the
backbone's input size, with the service's default ``ImagingSettings`` limits) and then through
the very ``model.onnx`` file Triton serves, run with onnxruntime. So a head trained here reads
the same embedding it will read in production, up to onnxruntime's own arithmetic.

The cache holds one ``.npz`` per backbone under the cache folder, keyed by the backbone file's
sha256 and each image's sha256: a second run over the same images neither decodes nor runs the
network, and a re-exported backbone (new sha256) never reuses stale rows.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
from tqdm import tqdm

from consumer.errors import ConfigError, EventRejected
from consumer.imaging.decode import ImageLimits, decode_image
from consumer.runtime.settings import ImagingSettings

logger = logging.getLogger(__name__)

EMBEDDING_OUTPUT = "embedding"
DEFAULT_BATCH = 32
"""Triton's ``max_batch_size`` for the backbone; the fastest onnxruntime batch on 2 cores."""


class TrainingFailed(ConfigError):
    """Heads could not be embedded, trained or reported; the message is one line saying why
    and what to do (the command line exits 2 with it)."""


@dataclass(frozen=True)
class Backbone:
    """The served backbone file: its Triton name, path, sha256 and input size."""

    name: str
    path: Path
    sha256: str
    input_size: int

    @classmethod
    def from_repo(cls, repo: Path, name: str) -> Backbone:
        """The newest version of ``repo/name`` that has a ``model.onnx``.

        Raises TrainingFailed when there is none or its input is not uint8 NHWC square.
        """
        versions = sorted(
            (int(entry.name), entry / "model.onnx")
            for entry in (repo / name).glob("*")
            if entry.name.isdigit() and (entry / "model.onnx").is_file()
        )
        if not versions:
            raise TrainingFailed(
                f"{repo / name}: no <version>/model.onnx; export the backbone first "
                f"(python -m training.nsfwjs.export --repo {repo})"
            )
        path = versions[-1][1]
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        shape = session.get_inputs()[0].shape
        names = {output.name for output in session.get_outputs()}
        if len(shape) != 4 or not isinstance(shape[1], int) or shape[1] != shape[2]:
            raise TrainingFailed(f"{path}: input shape {shape} is not [batch, size, size, 3]")
        if EMBEDDING_OUTPUT not in names:
            raise TrainingFailed(f"{path}: no {EMBEDDING_OUTPUT!r} output (has {sorted(names)})")
        return cls(name=name, path=path, sha256=file_sha256(path), input_size=int(shape[1]))


@dataclass(frozen=True)
class Embedded:
    """Embeddings of the images that decoded, and what it cost."""

    embeddings: npt.NDArray[np.float32]
    """[kept, D], in the order of ``kept``."""
    kept: npt.NDArray[np.int64]
    """Indexes of the input images that have a row."""
    rejected: dict[int, str]
    """Index → why the consumer's decode refused it (such images would be dead-lettered)."""
    computed: int
    """Distinct images decoded and run through the backbone in this call."""
    cached: int
    """Distinct images found in the cache."""
    seconds: float
    """Decode and inference time of the computed images."""

    @property
    def seconds_per_image(self) -> float | None:
        return self.seconds / self.computed if self.computed else None


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def default_limits() -> ImageLimits:
    """The limits the consumer applies by default, so a labelled image it would refuse is
    refused here too."""
    return ImageLimits.from_settings(ImagingSettings())


class EmbeddingCache:
    """Embeddings of one backbone keyed by image sha256, in ``folder/<sha256[:16]>.npz``."""

    def __init__(self, folder: Path, backbone_sha256: str) -> None:
        if not re.fullmatch(r"[0-9a-f]{64}", backbone_sha256):
            raise ValueError(f"not a sha256: {backbone_sha256!r}")
        self.path = folder / f"{backbone_sha256[:16]}.npz"
        self.backbone_sha256 = backbone_sha256

    def load(self) -> dict[str, npt.NDArray[np.float32]]:
        if not self.path.is_file():
            return {}
        try:
            with np.load(self.path, allow_pickle=False) as stored:
                if str(stored["backbone_sha256"]) != self.backbone_sha256:
                    return {}
                keys = [str(key) for key in stored["keys"]]
                rows = stored["embeddings"].astype(np.float32)
        except (OSError, KeyError, ValueError) as exc:
            # A cache is only a shortcut: a damaged one is recomputed, not trusted.
            logger.warning("ignoring unreadable embedding cache %s: %s", self.path, exc)
            return {}
        return dict(zip(keys, rows, strict=True))

    def save(self, rows: dict[str, npt.NDArray[np.float32]]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        keys = sorted(rows)
        partial = self.path.with_name(f".{self.path.stem}.{os.getpid()}.npz")
        np.savez(
            partial,
            backbone_sha256=np.array(self.backbone_sha256),
            keys=np.array(keys),
            embeddings=np.stack([rows[key] for key in keys]).astype(np.float32),
        )
        # Readers see the old file or the new one, never half of one.
        os.replace(partial, self.path)


class OnnxBackbone:
    """The backbone file run with onnxruntime on uint8 NHWC batches."""

    def __init__(self, backbone: Backbone, threads: int) -> None:
        options = ort.SessionOptions()
        # On 2 cores onnxruntime's default (a thread per core, plus inter-op threads) fights
        # the decode threads; fixed counts make timings comparable between runs.
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self._session = ort.InferenceSession(
            str(backbone.path), options, providers=["CPUExecutionProvider"]
        )
        self._input = self._session.get_inputs()[0].name

    def embed(self, pixels: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
        (embedding,) = self._session.run([EMBEDDING_OUTPUT], {self._input: pixels})
        result: npt.NDArray[np.float32] = np.asarray(embedding, dtype=np.float32)
        return result


def embed_images(
    images: Sequence[bytes],
    backbone: Backbone,
    *,
    cache_dir: Path | None,
    threads: int = 2,
    batch: int = DEFAULT_BATCH,
    limits: ImageLimits | None = None,
    progress: bool = True,
) -> Embedded:
    """Embed ``images`` (encoded bytes) as the served backbone does, reusing cached rows.

    Images the consumer's decode refuses get no row (see ``Embedded.rejected``).
    """
    limits = limits or default_limits()
    keys = [hashlib.sha256(image).hexdigest() for image in images]
    cache = EmbeddingCache(cache_dir, backbone.sha256) if cache_dir is not None else None
    known = cache.load() if cache is not None else {}
    todo: dict[str, bytes] = {}
    for key, image in zip(keys, images, strict=True):
        if key not in known:
            todo.setdefault(key, image)
    cached = len(set(keys) - set(todo))
    rejected_keys: dict[str, str] = {}
    started = time.perf_counter()
    if todo:
        computed = _compute(todo, backbone, threads, batch, limits, progress, rejected_keys)
        known.update(computed)
        if cache is not None and computed:
            cache.save(known)
    seconds = time.perf_counter() - started
    kept = [index for index, key in enumerate(keys) if key in known]
    rejected = {index: rejected_keys[key] for index, key in enumerate(keys) if key not in known}
    dim = next(iter(known.values())).shape[0] if known else 0
    rows = np.stack([known[keys[index]] for index in kept]) if kept else np.zeros((0, dim))
    logger.info(
        "embedded %d images with %s (%d cached, %d computed in %.1f s, %d refused by decode)",
        len(images),
        backbone.name,
        cached,
        len(todo) - len(rejected_keys),
        seconds,
        len(rejected_keys),
    )
    return Embedded(
        embeddings=rows.astype(np.float32),
        kept=np.asarray(kept, dtype=np.int64),
        rejected=rejected,
        computed=len(todo) - len(rejected_keys),
        cached=cached,
        seconds=seconds if todo else 0.0,
    )


def _compute(
    todo: dict[str, bytes],
    backbone: Backbone,
    threads: int,
    batch: int,
    limits: ImageLimits,
    progress: bool,
    rejected: dict[str, str],
) -> dict[str, npt.NDArray[np.float32]]:
    network = OnnxBackbone(backbone, threads)
    size = backbone.input_size

    def decode(item: tuple[str, bytes]) -> tuple[str, npt.NDArray[np.uint8] | str]:
        key, data = item
        try:
            return key, decode_image(data, size, limits).pixels
        except EventRejected as exc:
            return key, f"{exc.code.value}: {exc}"

    items = list(todo.items())
    rows: dict[str, npt.NDArray[np.float32]] = {}
    with (
        ThreadPoolExecutor(max_workers=threads) as pool,
        tqdm(total=len(items), unit="img", desc="embed", disable=not progress) as bar,
    ):
        for start in range(0, len(items), batch):
            decoded = list(pool.map(decode, items[start : start + batch]))
            good = [(key, pixels) for key, pixels in decoded if not isinstance(pixels, str)]
            for key, why in decoded:
                if isinstance(why, str):
                    rejected[key] = why
                    logger.warning("image %s refused by decode: %s", key[:12], why)
            if good:
                embeddings = network.embed(np.stack([pixels for _, pixels in good]))
                rows.update((key, row) for (key, _), row in zip(good, embeddings, strict=True))
            bar.update(len(decoded))
    return rows
