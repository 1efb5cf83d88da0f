"""The GPU decode path (docs/gpu.md) against the consumer's CPU path, and the served engine.

    python -m bench.gpu_preprocess [--triton HOST:8001] [--megapixels 2 6 12] [--seconds 2]
        [--max-dprob 2.4e-3] [--max-decode-dprob 0.05] [--out FILE]

Needs a CUDA GPU: without one it exits 2 with one line (CI never runs it). Run it from a
clone set up with ./scripts/setup.sh on the GPU machine. The images are the benchmark's
photos (bench.e2e.images) at each size, plus JPEG variants the consumer would forward:
progressive, grayscale, 4:4:4 chroma, EXIF-rotated and CMYK. What the machine has decodes them:

- ``dali``: the pipeline Triton serves (deploy/triton-gpu/dali.py), run by DALI outside
  Triton on zero-padded rows as the check-only step sends them (nvidia-dali-cuda12x);
- ``torchvision``: nvJPEG through ``torchvision.io.decode_jpeg`` on the GPU and an
  antialiased bilinear resize, a stand-in for DALI where it is not installed.

Each is compared with the consumer's decode (``consumer.imaging.decode.decode_image``): pixel
differences, and the backbone's probabilities on both (eager PyTorch on the GPU, fp32 with
TF32 off); decode images/s at batch 32 is timed. With ``--triton`` the deployment itself is
checked: the served backbone (TensorRT fp16, or the fp32 fallback) on the consumer's pixels
against eager fp32, and ``<model>_bytes`` on the files against the whole CPU path.

Checks (exit 1 when one fails): the served backbone within ``--max-dprob`` (default: the fp16
figure of triton_repo/README.md, "On a GPU") with the same top class on every image; DALI
and the bytes ensemble within ``--max-decode-dprob`` of the CPU path, decoding every image,
every status empty. The report is printed and written as JSON.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import inspect
import io
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from PIL import Image
from tritonclient.utils import InferenceServerException

from bench.clone import clone_root
from consumer.errors import ConfigError
from training.nsfwjs.errors import ImportFailed

SIZE = 224
MODEL = "mobilenet_v2"
SERVED = "nsfw_mobilenet_v2"
BATCH = 32
FP16_MAX_DPROB = 2.4e-3
"""Max |dprob| of fp16 against the CPU, measured with autocast (triton_repo/README.md)."""
DECODE_MAX_DPROB = 0.05
"""A full-resolution decode moved scores by up to 0.037 against the consumer's DCT-scaled
one on 2-12 MP photos (bench/results/decode_compare.json, ``pillow_full``)."""

VARIANT = "variant-"
"""Name prefix of the JPEG variants; the other images are photos (timed in batches)."""

Pixels = npt.NDArray[np.uint8]
Decoder = Callable[[list[bytes]], Pixels]
Report = dict[str, Any]


def corpus(megapixels: list[float]) -> list[tuple[str, bytes]]:
    """The benchmark photos at each size, then variants of the first one."""
    from bench.e2e.images import generate_images

    items = [
        (f"{image.name}-{mp:g}mp", image.jpeg) for mp in megapixels for image in generate_images(mp)
    ]
    photo = Image.open(io.BytesIO(items[0][1])).convert("RGB")
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
    variants: dict[str, tuple[Image.Image, dict[str, Any]]] = {
        "progressive": (photo, {"progressive": True}),
        "grayscale": (photo.convert("L"), {}),
        "chroma-444": (photo, {"subsampling": 0}),
        "exif-rotated": (photo, {"exif": exif.tobytes()}),
        "cmyk": (photo.convert("CMYK"), {}),
    }
    for name, (image, options) in variants.items():
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=90, **options)
        items.append((f"{VARIANT}{name}", buffer.getvalue()))
    return items


def cpu_decoder() -> Decoder:
    from consumer.imaging.decode import ImageLimits, decode_image
    from consumer.runtime.settings import ImagingSettings

    limits = ImageLimits.from_settings(ImagingSettings())
    return lambda items: np.stack([decode_image(data, SIZE, limits).pixels for data in items])


def dali_decoder() -> Decoder | str:
    """The served pipeline, or why it cannot run here."""
    try:
        importlib.import_module("nvidia.dali")
    except ImportError:
        return "nvidia.dali is not installed (pip install nvidia-dali-cuda120)"
    try:
        path = clone_root() / "deploy" / "triton-gpu" / "dali.py"
    except ConfigError as exc:
        return str(exc)
    spec = importlib.util.spec_from_file_location("modstream_preprocess_dali", path)
    if spec is None or spec.loader is None:
        return f"cannot load {path}"
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    state: dict[str, Any] = {}

    def decode(items: list[bytes]) -> Pixels:
        if "pipe" not in state:
            state["pipe"] = module.preprocess(batch_size=module.MAX_BATCH, device_id=0)
            state["pipe"].build()
        rows = np.zeros((len(items), max(map(len, items))), dtype=np.uint8)
        for row, data in zip(rows, items, strict=True):
            row[: len(data)] = np.frombuffer(data, dtype=np.uint8)
        try:
            state["pipe"].feed_input(module.INPUT, rows)
            (images,) = state["pipe"].run()
        except Exception:
            state.clear()  # a pipeline whose batch failed is not reused
            raise
        return np.asarray(images.as_cpu().as_array(), dtype=np.uint8)

    return decode


def torchvision_decoder() -> Decoder | str:
    import torch
    import torch.nn.functional as nnf

    try:
        tv_io: Any = importlib.import_module("torchvision.io")
    except ImportError:
        return "torchvision is not installed"
    options: dict[str, Any] = {"mode": tv_io.ImageReadMode.RGB, "device": "cuda"}
    if "apply_exif_orientation" in inspect.signature(tv_io.decode_jpeg).parameters:
        options["apply_exif_orientation"] = True

    def decode(items: list[bytes]) -> Pixels:
        encoded = [torch.frombuffer(bytearray(data), dtype=torch.uint8) for data in items]
        resized = []
        for chw in tv_io.decode_jpeg(encoded, **options):
            scaled = nnf.interpolate(
                chw[None].float(), size=(SIZE, SIZE), mode="bilinear", antialias=True
            )
            resized.append(scaled[0].round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0))
        return torch.stack(resized).cpu().numpy()

    return decode


class Backbone:
    """The eager network on the GPU in fp32 (TF32 off): the reference for every score."""

    def __init__(self) -> None:
        import torch

        from training.nsfwjs.models import load

        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        self.model = load(MODEL).cuda().uint8_input()

    def probs(self, pixels: Pixels) -> npt.NDArray[np.float32]:
        import torch

        with torch.no_grad():
            probs, _ = self.model(torch.from_numpy(np.ascontiguousarray(pixels)).cuda())
        return np.asarray(probs.float().cpu().numpy(), dtype=np.float32)


def compare(
    probs: npt.NDArray[np.float32], reference: npt.NDArray[np.float32], limit: float
) -> Report:
    dprob = float(np.abs(probs - reference).max(initial=0.0))
    top1 = float(np.mean(probs.argmax(1) == reference.argmax(1))) if len(probs) else 1.0
    return {"max_abs_dprob": dprob, "top1_agreement": top1, "limit": limit}


def decode_report(
    decode: Decoder, items: list[tuple[str, bytes]], reference: Pixels, backbone: Backbone,
    limit: float, seconds: float,
) -> Report:  # fmt: skip
    """Pixels and scores against the CPU path, one image per batch (a failure names its
    image), then images/s on full batches of the photos."""
    decoded, failures = {}, {}
    for index, (name, data) in enumerate(items):
        try:
            decoded[index] = decode([data])[0]
        except Exception as exc:
            failures[name] = f"{type(exc).__name__}: {str(exc)[:200]}"
    if not decoded:
        return {"failures": failures, "passed": False}
    rows = list(decoded)
    pixels = np.stack(list(decoded.values()))
    diff = np.abs(pixels.astype(np.int16) - reference[rows])
    scores = compare(backbone.probs(pixels), backbone.probs(reference[rows]), limit)
    photos = [data for name, data in items if not name.startswith(VARIANT)]
    batch = (photos * BATCH)[:BATCH]
    decode(batch)  # warm-up: allocations, the hardware decoder's setup
    count, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        decode(batch)
        count += len(batch)
    return {
        **scores,
        "mean_abs_pixel_diff": round(float(diff.mean()), 3),
        "max_abs_pixel_diff": int(diff.max()),
        "images_per_s_batch32": round(count / (time.perf_counter() - started), 1),
        "failures": failures,
        "passed": not failures and scores["max_abs_dprob"] <= limit,
    }


def triton_report(
    url: str, items: list[tuple[str, bytes]], reference: Pixels, backbone: Backbone,
    max_dprob: float, max_decode_dprob: float,
) -> Report:  # fmt: skip
    """The served backbone on the consumer's pixels, in batches; the bytes ensemble on each
    file alone, so that a request it fails names its image."""
    import tritonclient.grpc as triton

    client = triton.InferenceServerClient(url)
    expected = backbone.probs(reference)
    served = []
    for start in range(0, len(reference), BATCH):
        pixels = np.ascontiguousarray(reference[start : start + BATCH])
        image = triton.InferInput("image", list(pixels.shape), "UINT8")
        image.set_data_from_numpy(pixels)
        served.append(client.infer(SERVED, [image]).as_numpy("probs"))
    engine = compare(np.concatenate(served), expected, max_dprob)
    scored, problems = {}, {}
    for index, (name, data) in enumerate(items):
        encoded = triton.InferInput("image_bytes", [1, 1], "BYTES")
        encoded.set_data_from_numpy(np.array([[data]], dtype=np.object_))
        try:
            result = client.infer(f"{SERVED}_bytes", [encoded])
        except InferenceServerException as exc:
            problems[name] = f"request failed: {exc.message()}"
            continue
        status = result.as_numpy("preprocess_status").reshape(-1)[0].decode()
        if status:
            problems[name] = f"refused: {status}"
        else:
            scored[index] = result.as_numpy("probs")[0]
    rows = list(scored)
    chain = (
        compare(np.stack(list(scored.values())), expected[rows], max_decode_dprob) if rows else {}
    )
    engine_ok = engine["max_abs_dprob"] <= max_dprob and engine["top1_agreement"] == 1.0
    chain_ok = not problems and chain.get("max_abs_dprob", 1.0) <= max_decode_dprob
    return {
        "backbone": {**engine, "passed": engine_ok},
        "bytes_ensemble": {**chain, "problems": problems, "passed": chain_ok},
    }


def cuda_device() -> str | None:
    """The GPU's name, or None without PyTorch or a visible CUDA device."""
    try:
        import torch
    except ImportError:
        return None
    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu_preprocess", description=__doc__)
    parser.add_argument("--triton", help="also check a deployment's Triton (gRPC host:port)")
    parser.add_argument("--megapixels", type=float, nargs="+", default=[2.0, 6.0, 12.0])
    parser.add_argument("--seconds", type=float, default=2.0, help="per throughput measurement")
    parser.add_argument("--max-dprob", type=float, default=FP16_MAX_DPROB)
    parser.add_argument("--max-decode-dprob", type=float, default=DECODE_MAX_DPROB)
    parser.add_argument(
        "--out", type=Path, help="default: <clone>/bench/results/gpu_preprocess.json"
    )
    args = parser.parse_args(argv)
    device = cuda_device()
    if device is None:
        sys.stderr.write("gpu preprocess check needs a CUDA GPU (and PyTorch); none is visible\n")
        return 2
    try:
        out: Path = args.out or clone_root() / "bench" / "results" / "gpu_preprocess.json"
        items = corpus(args.megapixels)
        reference = cpu_decoder()([data for _, data in items])
        backbone = Backbone()
    except (ConfigError, ImportFailed, ImportError, OSError) as exc:
        sys.stderr.write(f"gpu preprocess check failed: {exc}\n")
        return 1
    report: Report = {"device": device, "images": [name for name, _ in items], "decoders": {}}
    for name, make in (("dali", dali_decoder), ("torchvision", torchvision_decoder)):
        decoder = make()
        report["decoders"][name] = (
            {"unavailable": decoder}
            if isinstance(decoder, str)
            else decode_report(
                decoder, items, reference, backbone, args.max_decode_dprob, args.seconds
            )
        )
    checks = [report["decoders"]["dali"].get("passed", True)]
    if args.triton:
        try:
            report["triton"] = triton_report(
                args.triton, items, reference, backbone, args.max_dprob, args.max_decode_dprob
            )
        except InferenceServerException as exc:
            sys.stderr.write(f"gpu preprocess check failed: Triton at {args.triton}: {exc}\n")
            return 1
        checks += [part["passed"] for part in report["triton"].values()]
    report["passed"] = all(checks)
    text = json.dumps(report, indent=2) + "\n"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    sys.stdout.write(text)
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
