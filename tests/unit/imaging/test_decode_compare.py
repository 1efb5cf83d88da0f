"""bench.decode_compare: every decoder is measured or listed as unavailable with the reason."""

from __future__ import annotations

import importlib
import io
import json
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
from PIL import Image

from bench import decode_compare, decode_libs
from consumer.imaging.decode import ImageLimits, decode_image
from consumer.runtime.settings import ImagingSettings
from tests.support.paths import REPO_ROOT, TRITON_REPO

SIZE = 224
OPTIONAL = ("simplejpeg", "pyturbojpeg", "pillow_simd")


def _photo(width: int = 1600, height: int = 1200) -> bytes:
    rng = np.random.default_rng(0)
    ys, xs = np.mgrid[0:height, 0:width]
    base = np.stack([xs * 255 // width, ys * 255 // height, (xs + ys) % 256], axis=-1)
    noisy = np.clip(base + rng.normal(0, 3, base.shape), 0, 255).astype(np.uint8)
    out = io.BytesIO()
    Image.fromarray(noisy).save(out, format="JPEG", quality=90)
    return out.getvalue()


def test_a_library_that_cannot_be_imported_is_reported_with_the_reason(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real_import = importlib.import_module

    def without_turbojpeg(name: str) -> ModuleType:
        if name == "turbojpeg":
            raise ModuleNotFoundError("No module named 'turbojpeg'")
        return real_import(name)

    monkeypatch.setattr(importlib, "import_module", without_turbojpeg)
    loaded = decode_libs.load_optional(SIZE)

    assert "pyturbojpeg" not in loaded.decoders
    gone = {u.decoder: u.reason for u in loaded.unavailable}
    assert gone["pyturbojpeg"] == "ModuleNotFoundError: No module named 'turbojpeg'"


def test_pyturbojpeg_scales_in_the_dct_domain_to_the_consumers_pixels() -> None:
    loaded = decode_libs.load_optional(SIZE)
    if "pyturbojpeg" not in loaded.decoders:
        pytest.skip(f"PyTurboJPEG unavailable: {loaded.unavailable}")
    jpeg = _photo()
    pixels = loaded.decoders["pyturbojpeg"](jpeg)
    consumer = decode_image(jpeg, SIZE, ImageLimits.from_settings(ImagingSettings())).pixels

    assert pixels.shape == consumer.shape == (SIZE, SIZE, 3)
    # Same scale (1/4) and the same fast IDCT and upsampling as Pillow's draft mode.
    assert float(np.abs(pixels.astype(np.int16) - consumer).mean()) < 0.5


def test_a_missing_pillow_simd_interpreter_is_unavailable(tmp_path: Path) -> None:
    result = decode_libs.run_pillow_simd(tmp_path / "python", [_photo()], 1, SIZE, tmp_path)
    assert result == decode_libs.Unavailable("pillow_simd", f"no interpreter at {tmp_path}/python")


def test_an_interpreter_without_pillow_simd_is_refused() -> None:
    result = decode_libs.run_pillow_simd(Path(sys.executable), [_photo()], 1, SIZE, REPO_ROOT)
    assert isinstance(result, decode_libs.Unavailable)
    assert "pillow-simd is not installed" in result.reason


@pytest.mark.skipif(
    not (TRITON_REPO / "nsfw_mobilenet_v2" / "1" / "model.onnx").is_file(),
    reason="needs the backbone from ./scripts/setup.sh",
)
def test_the_report_has_every_decoder_or_why_not(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "decode_compare.json"
    argv = ["--megapixels", "0.3", "--repeats", "1", "--out", str(out)]
    assert decode_compare.main(argv) == 0

    report = json.loads(out.read_text())
    measured = {row["decoder"] for row in report["rows"]}
    gone = {u["decoder"]: u["reason"] for u in report["unavailable"]}
    assert {"consumer", "pillow_full"} <= measured
    for name in OPTIONAL:
        assert (name in measured) != (name in gone), name
    assert "--pillow-simd-python" in gone["pillow_simd"]
    consumer = next(row for row in report["rows"] if row["decoder"] == "consumer")
    assert consumer["ratio_to_consumer"] == 1.0
    assert consumer["max_abs_pixel_diff_vs_consumer"] == 0
    assert set(report["decoders"]) == measured
    assert "unavailable: pillow_simd" in capsys.readouterr().out
