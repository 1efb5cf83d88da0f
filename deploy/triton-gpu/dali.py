"""The ``preprocess_dali`` pipeline: checked image bytes to the backbone's input, on the GPU.

The DALI backend finds this file at ``preprocess_dali/1/dali.py`` and serializes the pipeline
marked ``@autoserialize`` when the model loads, so the repository holds readable Python
instead of a serialized ``model.dali``. It runs in the backend's own Python environment
(NVIDIA's Triton image), never in the consumer's. ``bench/gpu_preprocess.py`` imports it
to run the very same pipeline outside Triton for the parity check.

What it does, against the consumer's Pillow path (docs/gpu.md):
- nvJPEG decodes at full resolution (device "mixed": host parsing, GPU or hardware decoding),
  where Pillow scales in the DCT domain first;
- EXIF orientation is applied, as the consumer does;
- the whole image is stretched to SIZE x SIZE (aspect ratio not kept, as nsfwjs was trained)
  with an antialiased linear filter, into UINT8 HWC RGB.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import nvidia.dali as dali
import nvidia.dali.fn as fn
import nvidia.dali.types as types
from nvidia.dali.plugin.triton import autoserialize

if TYPE_CHECKING:
    from nvidia.dali.data_node import DataNode

SIZE = 224
"""modstream.input_size of the backbones this repository serves (preprocess_dali.pbtxt)."""
MAX_BATCH = 32
"""Triton's max_batch_size for the step; the backend runs batches up to this size."""
INPUT = "checked_bytes"
"""The external source's name is the Triton input it is fed from."""


@autoserialize
@dali.pipeline_def(
    batch_size=MAX_BATCH,
    num_threads=4,
    device_id=0,
    output_dtype=[types.UINT8],
    output_ndim=[3],
)
def preprocess() -> DataNode:
    # Declared type and rank let the backend check the model config against the pipeline.
    encoded = fn.external_source(device="cpu", name=INPUT, dtype=types.UINT8, ndim=1)
    decoded = fn.decoders.image(
        encoded, device="mixed", output_type=types.RGB, adjust_orientation=True
    )
    return fn.resize(
        decoded,
        resize_x=SIZE,
        resize_y=SIZE,
        interp_type=types.INTERP_LINEAR,
        antialias=True,
    )
