"""Triton's preprocess step; the code is consumer.inference.preprocess_model."""

from consumer.inference.preprocess_model import TritonPythonModel

__all__ = ["TritonPythonModel"]
