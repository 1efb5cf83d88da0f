"""Triton's ``preprocess`` step: encoded image bytes in, the model's input out, a status each.

``triton_repo/preprocess/1/model.py`` re-exports ``TritonPythonModel`` from here, so Triton's
Python backend runs the consumer's own decode code and limits (the image needs this package
installed, as ``deploy/docker/triton.Dockerfile`` does).

One bad image never fails the request that carries it with others: each image gets a
``preprocess_status`` (empty, or the dead-letter reason code the consumer would have given it)
and ``preprocess_detail``, and a black image in its place, which the backbone scores and the
consumer discards. A request-level problem (no ``image_bytes``) gets an error response of its
own; every request gets exactly one response.

With the parameter ``modstream.decode`` set to ``false`` the step only checks (header, caps,
format) and passes the bytes on as ``checked_bytes`` — a placeholder JPEG for a refused image,
so that a batch decoder behind it (DALI on GPUs, docs/gpu.md) never sees a refused one.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from PIL import Image

from consumer.contract.reasons import ReasonCode
from consumer.errors import ImageRejected
from consumer.imaging.decode import ImageLimits, check_or_decode, decode_image

INPUT = "image_bytes"
IMAGE_OUTPUT = "image"
CHECKED_OUTPUT = "checked_bytes"
STATUS_OUTPUT = "preprocess_status"
DETAIL_OUTPUT = "preprocess_detail"

INPUT_SIZE_PARAMETER = "modstream.input_size"
DECODE_PARAMETER = "modstream.decode"
# The formats the decoder behind a check-only step reads (e.g. JPEG for nvJPEG); the consumer
# forwards only these and decodes the rest itself. Absent: every allowed format.
ENCODED_FORMATS_PARAMETER = "modstream.encoded_formats"
LIMIT_PARAMETERS = {
    "max_bytes": "modstream.max_image_bytes",
    "max_pixels": "modstream.max_pixels",
    "max_decode_bytes": "modstream.max_decode_bytes",
}


@dataclass(frozen=True)
class Prepared:
    """One request's images, statuses and details, in order."""

    images: npt.NDArray[np.uint8]
    checked: list[bytes]
    status: list[str]
    detail: list[str]


class Preprocessor:
    """What the Triton model does, without Triton: testable on its own."""

    def __init__(
        self,
        size: int,
        limits: ImageLimits,
        *,
        decode: bool = True,
        formats: frozenset[str] = frozenset(),
    ) -> None:
        self.size = size
        self.limits = limits
        self.decode = decode
        self.formats = formats
        self.placeholder = _placeholder_jpeg()

    @classmethod
    def from_parameters(cls, parameters: dict[str, str]) -> Preprocessor:
        """From the model config's parameters; ValueError names a missing or bad one."""
        try:
            size = int(parameters[INPUT_SIZE_PARAMETER])
            limits = {key: int(parameters[name]) for key, name in LIMIT_PARAMETERS.items()}
        except (KeyError, ValueError) as exc:
            raise ValueError(
                f"preprocess needs integer parameters {INPUT_SIZE_PARAMETER} and "
                f"{', '.join(LIMIT_PARAMETERS.values())} in its config.pbtxt: {exc}"
            ) from exc
        # One frame: the consumer decodes animations itself (their sampled frames are
        # several model inputs), so Triton sees still images or another client's first frame.
        return cls(
            size,
            ImageLimits(sample_frames=1, **limits),
            decode=parameters.get(DECODE_PARAMETER, "true").lower() != "false",
            formats=encoded_formats(parameters),
        )

    def prepare(self, items: list[bytes]) -> Prepared:
        images = np.zeros((len(items), self.size, self.size, 3), dtype=np.uint8)
        checked: list[bytes] = []
        status: list[str] = []
        detail: list[str] = []
        for index, data in enumerate(items):
            try:
                if self.decode:
                    images[index] = decode_image(data, self.size, self.limits).pixels
                else:
                    self._check(data)
            except ImageRejected as exc:
                code, message = exc.code.value, exc.message
            except Exception as exc:
                code = ReasonCode.INTERNAL_ERROR.value
                message = f"preprocess failed: {type(exc).__name__}: {exc}"
            else:
                code, message = "", ""
            status.append(code)
            detail.append(message)
            checked.append(data if not code else self.placeholder)
        return Prepared(images, checked, status, detail)

    def _check(self, data: bytes) -> None:
        checked = check_or_decode(data, self.size, self.limits, self.formats)
        if self.formats and checked.source_format not in self.formats:
            raise ImageRejected(
                ReasonCode.IMAGE_UNSUPPORTED_FORMAT,
                f"{checked.source_format} is not decoded on this path "
                f"({', '.join(sorted(self.formats))}); the consumer decodes it itself",
            )


def encoded_formats(parameters: dict[str, str]) -> frozenset[str]:
    text = parameters.get(ENCODED_FORMATS_PARAMETER, "")
    return frozenset(name.strip().upper() for name in text.split(",") if name.strip())


class TritonPythonModel:
    """The Python-backend model; ``execute`` returns one response per request."""

    def initialize(self, args: dict[str, str]) -> None:
        config = json.loads(args["model_config"])
        parameters = {
            key: value.get("string_value", "")
            for key, value in config.get("parameters", {}).items()
        }
        self.preprocessor = Preprocessor.from_parameters(parameters)
        # A batch decoder such as DALI takes encoded images as UINT8 rows, not strings.
        self.padded = any(
            output["name"] == CHECKED_OUTPUT and output["data_type"] == "TYPE_UINT8"
            for output in config.get("output", [])
        )

    def execute(self, requests: list[Any]) -> list[Any]:
        import triton_python_backend_utils as pb_utils

        responses = []
        for request in requests:
            tensor = pb_utils.get_input_tensor_by_name(request, INPUT)
            if tensor is None:
                error = pb_utils.TritonError(f"the request has no {INPUT} input")
                responses.append(pb_utils.InferenceResponse(output_tensors=[], error=error))
                continue
            items = [bytes(item) for item in tensor.as_numpy().reshape(-1)]
            prepared = self.preprocessor.prepare(items)
            outputs = [
                pb_utils.Tensor(STATUS_OUTPUT, _column(prepared.status)),
                pb_utils.Tensor(DETAIL_OUTPUT, _column(prepared.detail)),
            ]
            if self.preprocessor.decode:
                outputs.append(pb_utils.Tensor(IMAGE_OUTPUT, prepared.images))
            elif self.padded:
                outputs.append(pb_utils.Tensor(CHECKED_OUTPUT, padded_rows(prepared.checked)))
            else:
                outputs.append(pb_utils.Tensor(CHECKED_OUTPUT, _column(prepared.checked)))
            responses.append(pb_utils.InferenceResponse(output_tensors=outputs))
        return responses


def _column(values: list[str] | list[bytes]) -> npt.NDArray[np.object_]:
    column = np.empty((len(values), 1), dtype=np.object_)
    for index, value in enumerate(values):
        column[index, 0] = value.encode() if isinstance(value, str) else value
    return column


def padded_rows(items: list[bytes]) -> npt.NDArray[np.uint8]:
    """Encoded images as rows zero-padded to the longest: JPEG decoders stop at the
    end-of-image marker and ignore what follows."""
    rows = np.zeros((len(items), max((len(item) for item in items), default=0)), dtype=np.uint8)
    for row, item in zip(rows, items, strict=True):
        row[: len(item)] = np.frombuffer(item, dtype=np.uint8)
    return rows


def _placeholder_jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, format="JPEG")
    return buffer.getvalue()
