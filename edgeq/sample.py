"""Bundled sample model and data: a small CNN trained on scikit-learn's 8x8 digits.

The files under ``edgeq/data`` are produced by ``apps/sample_model/train_digits_cnn.py``. This module
is numpy-only on purpose: the training script loads it by file path so that :func:`preprocess` has
exactly one definition, shared by training and by users at run time.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import pathlib
from dataclasses import dataclass
from importlib.resources import as_file, files

import numpy as np

__all__ = ["SampleData", "load_sample", "preprocess"]

MODEL_FILE = "digits_cnn.onnx"
DATA_FILE = "digits.npz"
META_FILE = "digits_cnn.json"

# as_file() may extract to a temporary file (zip installs); keep it alive for the whole process
# because SampleData hands out a plain path rather than a context manager.
_resource_files = contextlib.ExitStack()
atexit.register(_resource_files.close)


@dataclass(frozen=True)
class SampleData:
    """The bundled digits model plus ready-to-use (already preprocessed) inputs.

    Attributes:
        model_path: the float32 ONNX model (input ``"input"`` [N,1,16,16], output ``"logits"`` [N,10]).
        calib: float32 [64,1,16,16] calibration batch taken from the training split.
        x_test: float32 [M,1,16,16] held-out inputs.
        y_test: int64 [M] held-out labels (0..9).
        float_accuracy: held-out top-1 accuracy of the float model under onnxruntime, in percent.
    """

    model_path: pathlib.Path
    calib: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    float_accuracy: float


def preprocess(raw: np.ndarray) -> np.ndarray:
    """Turn raw digits images into model inputs.

    Args:
        raw: [..., 8, 8] pixel values 0..16 (any integer or float dtype), e.g. uint8 [N,1,8,8].

    Returns:
        float32 [..., 16, 16] in [0, 1]: each pixel repeated 2x2 (nearest-neighbour upsampling), / 16.
    """
    up = np.repeat(np.repeat(np.asarray(raw), 2, axis=-1), 2, axis=-2)
    return up.astype(np.float32) / 16.0


def _data_path(name: str) -> pathlib.Path:
    return _resource_files.enter_context(as_file(files("edgeq") / "data" / name))


def load_sample() -> SampleData:
    """Load the bundled digits CNN, its calibration batch and its held-out test split.

    Returns:
        A :class:`SampleData` whose arrays are already passed through :func:`preprocess`.
    """
    with np.load(_data_path(DATA_FILE)) as npz:
        calib_raw = npz["calib_raw"]
        test_raw = npz["test_raw"]
        test_labels = npz["test_labels"]
    meta = json.loads(_data_path(META_FILE).read_text(encoding="utf-8"))
    return SampleData(
        model_path=_data_path(MODEL_FILE),
        calib=preprocess(calib_raw),
        x_test=preprocess(test_raw),
        y_test=test_labels.astype(np.int64),
        float_accuracy=float(meta["float_accuracy"]),
    )
