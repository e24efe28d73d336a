"""Reading and writing named arrays as .npy (single tensor) or .npz (keyed by name), without pickles."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from .errors import EdgeqError


def read_named_arrays(path: str | Path, names: list[str], error: type[EdgeqError], what: str) -> dict[str, np.ndarray]:
    """Load ``path``: an .npz keyed by name, or an .npy when there is exactly one name.

    ``what`` names the file's role in messages ("calibration", "input"); failures raise ``error``.
    """
    path = Path(path)
    try:
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as z:
                return {k: z[k] for k in z.files}
        if path.suffix != ".npy":
            raise error(f"{what} file '{path}' must be .npy or .npz")
        if len(names) != 1:
            raise error(f"model has {len(names)} inputs; give the {what} data as .npz keyed by input name "
                        f"({', '.join(names)})")
        return {names[0]: np.load(path, allow_pickle=False)}
    except (OSError, ValueError, EOFError) as e:
        raise error(f"cannot read {what} file '{path}': {e}") from None


def encode_named_arrays(path: str | Path, arrays: dict[str, np.ndarray], error: type[EdgeqError]) -> bytes:
    """The bytes of an .npz (any number of arrays) or .npy (exactly one) file for ``arrays``."""
    buf = io.BytesIO()
    if str(path).endswith(".npz"):
        np.savez(buf, **arrays)
    elif str(path).endswith(".npy"):
        if len(arrays) != 1:
            raise error(f"model has {len(arrays)} outputs; write them to an .npz")
        np.save(buf, next(iter(arrays.values())))
    else:
        raise error(f"output file '{path}' must be .npy or .npz")
    return buf.getvalue()
