"""edgeq: trained model + target device -> deployable, verified, fast on-device bundle.

Pipeline: import (``converters.onnx_import``) -> graph passes (``converters.passes``) -> calibrate and
quantize (``converters.calibrate``, ``converters.quantize``) -> plan memory (``runtimes.planner``) -> pack
(``edgeq.bundle``) -> run (``edgeq.api``, ``runtimes.executor``).

``import edgeq`` loads only the runtime side (numpy); the converter, which needs ``onnx``, is imported
when ``edgeq.convert`` is first called, so a device can ship the runtime alone.
"""

from __future__ import annotations

from typing import Any

from .errors import EdgeqError

__version__ = "0.1.0"
__all__ = ["EdgeqError", "convert", "load", "__version__"]


def convert(*args: Any, **kwargs: Any) -> Any:
    """Convert a model into a bundle; see :func:`edgeq.converters.pipeline.convert`."""
    from .converters.pipeline import convert as _convert

    return _convert(*args, **kwargs)


def load(path: Any, backend: str = "auto") -> Any:
    """Load a ``.edgeq`` bundle for running; see :func:`edgeq.api.load`."""
    from .api import load as _load

    return _load(path, backend=backend)
