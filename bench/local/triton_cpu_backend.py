"""CPU stand-in for NVIDIA's native onnxruntime backend, run by Triton's Python backend.

The tritonserver inside the nvidia-pytriton wheel ships only the Python backend. Installed as
``<backend-directory>/onnxruntime/model.py`` (see :mod:`bench.local.triton`), this file
serves every model whose config says ``backend: "onnxruntime"``, so ``triton_repo/`` serves
unchanged here and in NVIDIA's GPU image, where the native backend takes its place.

It loads ``<model dir>/<version>/model.onnx`` (or ``default_model_filename``) on onnxruntime's
CPU provider, runs all requests of a dynamic batch as one ``session.run`` and answers each
request on its own: a malformed request gets an error response without failing the others.

Model-config parameters it reads:

- ``modstream.cpu_threads``: onnxruntime intra-op threads (default 1). Small machines run
  Triton, the consumer and the broker side by side; one thread per core each would make
  them fight. The native backend's ``intra_op_thread_count`` is honoured when this is absent.

This module imports ``triton_python_backend_utils``, which exists only inside Triton's Python
stub process; it is not importable elsewhere.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
import triton_python_backend_utils as pb_utils

logger = logging.getLogger(__name__)

Array = npt.NDArray[Any]


class _TritonLogHandler(logging.Handler):
    """Forwards records to Triton's own log, where the stub's stderr would be unformatted."""

    def emit(self, record: logging.LogRecord) -> None:
        message = self.format(record)
        if record.levelno >= logging.ERROR:
            pb_utils.Logger.log_error(message)
        elif record.levelno >= logging.WARNING:
            pb_utils.Logger.log_warn(message)
        else:
            pb_utils.Logger.log_info(message)


@dataclass(frozen=True)
class _TensorSpec:
    name: str
    dtype: np.dtype[Any]
    # Without the batch dimension; -1 matches any size.
    dims: tuple[int, ...]

    @classmethod
    def from_config(cls, entry: Mapping[str, Any]) -> _TensorSpec:
        dtype = np.dtype(pb_utils.triton_string_to_numpy(entry["data_type"]))
        return cls(str(entry["name"]), dtype, tuple(int(d) for d in entry["dims"]))

    def problem_with(self, array: Array, batched: bool) -> str | None:
        """Describe why ``array`` does not fit this spec, or return None when it does."""
        shape = tuple(array.shape[1:] if batched else array.shape)
        fits_shape = (
            (array.ndim >= 1 or not batched)
            and len(shape) == len(self.dims)
            and all(want in (-1, got) for want, got in zip(self.dims, shape, strict=True))
        )
        if array.dtype == self.dtype and fits_shape:
            return None
        batch = "[batch] + " if batched else ""
        return (
            f"input '{self.name}' must be {self.dtype} {batch}{list(self.dims)}, "
            f"got {array.dtype} {list(array.shape)}"
        )


def _thread_count(config: Mapping[str, Any]) -> int:
    parameters: Mapping[str, Any] = config.get("parameters") or {}
    for key in ("modstream.cpu_threads", "intra_op_thread_count"):
        raw = parameters.get(key, {}).get("string_value", "")
        if not raw:
            continue
        try:
            threads = int(raw)
        except ValueError:
            raise ValueError(f"model parameter {key!r} must be an integer, got {raw!r}") from None
        # The native backend reads 0 as "onnxruntime's default", one thread per core, which is
        # exactly what this stand-in avoids; keep looking for an explicit count.
        if threads > 0:
            return threads
    return 1


def _error_response(message: str, code: Any) -> Any:
    return pb_utils.InferenceResponse(error=pb_utils.TritonError(message, code))


class TritonPythonModel:
    """Triton's entry point: one instance per model instance, in its own stub process."""

    def initialize(self, args: Mapping[str, str]) -> None:
        """Open the ONNX file named by the model config; raise if it does not match the config."""
        if not any(isinstance(h, _TritonLogHandler) for h in logger.handlers):
            logger.addHandler(_TritonLogHandler())
            logger.setLevel(logging.INFO)
            logger.propagate = False
        config: dict[str, Any] = json.loads(args["model_config"])
        self._name = str(config.get("name", args.get("model_name", "?")))
        self._batched = int(config.get("max_batch_size", 0)) > 0
        self._inputs = [_TensorSpec.from_config(entry) for entry in config.get("input", [])]
        self._outputs = [_TensorSpec.from_config(entry) for entry in config.get("output", [])]
        filename = str(config.get("default_model_filename") or "model.onnx")
        model_path = Path(args["model_repository"]) / args["model_version"] / filename
        threads = _thread_count(config)

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        # Spinning workers would steal the cores the consumer and broker share with Triton.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self._session = ort.InferenceSession(
            str(model_path), sess_options=options, providers=["CPUExecutionProvider"]
        )
        self._check_model_matches_config(model_path)
        logger.info(
            "model %s: serving %s on onnxruntime %s (CPU, %d intra-op threads)",
            self._name,
            model_path,
            ort.__version__,
            threads,
        )

    def _check_model_matches_config(self, model_path: Path) -> None:
        model_inputs = {i.name for i in self._session.get_inputs()}
        model_outputs = {o.name for o in self._session.get_outputs()}
        missing = [s.name for s in self._inputs if s.name not in model_inputs] + [
            s.name for s in self._outputs if s.name not in model_outputs
        ]
        if missing:
            raise ValueError(
                f"{model_path} has no tensors named {missing} from the model config "
                f"(inputs {sorted(model_inputs)}, outputs {sorted(model_outputs)})"
            )

    def execute(self, requests: Sequence[Any]) -> list[Any]:
        """Run every well-formed request in one batch; return exactly one response per request."""
        responses: list[Any] = [None] * len(requests)
        accepted: list[tuple[int, dict[str, Array]]] = []
        for index, request in enumerate(requests):
            feeds, problem = self._read(request)
            if problem is None:
                accepted.append((index, feeds))
            else:
                responses[index] = _error_response(problem, pb_utils.TritonError.INVALID_ARG)
        if self._batched:
            if accepted:
                self._run_together(accepted, responses)
        else:
            for item in accepted:
                self._run_together([item], responses)
        return responses

    def _read(self, request: Any) -> tuple[dict[str, Array], str | None]:
        feeds: dict[str, Array] = {}
        batch_sizes: set[int] = set()
        for spec in self._inputs:
            tensor = pb_utils.get_input_tensor_by_name(request, spec.name)
            if tensor is None:
                return feeds, f"input '{spec.name}' is missing"
            array: Array = tensor.as_numpy()
            problem = spec.problem_with(array, self._batched)
            if problem is not None:
                return feeds, problem
            feeds[spec.name] = array
            if self._batched:
                batch_sizes.add(int(array.shape[0]))
        if len(batch_sizes) > 1:
            return feeds, f"inputs have different batch sizes {sorted(batch_sizes)}"
        return feeds, None

    def _run_together(
        self, accepted: Sequence[tuple[int, dict[str, Array]]], responses: list[Any]
    ) -> None:
        names = [spec.name for spec in self._outputs]
        if len(accepted) == 1:
            feeds = accepted[0][1]
        else:
            feeds = {
                spec.name: np.concatenate([f[spec.name] for _, f in accepted], axis=0)
                for spec in self._inputs
            }
        try:
            results = self._session.run(names, feeds)
        # onnxruntime's errors derive straight from Exception. Each one is answered to the
        # requests it affects, so none is lost.
        except Exception as exc:
            logger.exception(
                "model %s: onnxruntime failed on %d requests", self._name, len(accepted)
            )
            for index, _ in accepted:
                responses[index] = _error_response(
                    f"onnxruntime failed: {exc}", pb_utils.TritonError.INTERNAL
                )
            return

        outputs = [
            np.asarray(result).astype(spec.dtype, copy=False)
            for result, spec in zip(results, self._outputs, strict=True)
        ]
        if not self._batched:
            index = accepted[0][0]
            responses[index] = self._response(names, outputs)
            return
        sizes = [int(next(iter(f.values())).shape[0]) for _, f in accepted]
        bounds = np.cumsum(sizes)[:-1]
        pieces = [np.split(output, bounds, axis=0) for output in outputs]
        for position, (index, _) in enumerate(accepted):
            responses[index] = self._response(names, [p[position] for p in pieces])

    @staticmethod
    def _response(names: Sequence[str], arrays: Sequence[Array]) -> Any:
        tensors = [
            pb_utils.Tensor(name, np.ascontiguousarray(array))
            for name, array in zip(names, arrays, strict=True)
        ]
        return pb_utils.InferenceResponse(output_tensors=tensors)

    def finalize(self) -> None:
        """Release the onnxruntime session before the stub exits."""
        del self._session
