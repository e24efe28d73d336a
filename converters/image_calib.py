"""Calibration from a folder of images: ``--calib DIR --preprocess "resize=48x320,mean=0.5,std=0.5"``.

The preprocessing spec is a comma-separated list of ``key=value``:
  resize=HxW       output size (required unless every image already has one size)
  keep_ratio=1     scale to height H keeping the aspect ratio, pad the right with ``pad`` (text lines)
  mean=M | M1/M2/M3, std=S | S1/S2/S3   applied after ``scale``: (x * scale - mean) / std
  scale=F          pixel multiplier (default 1/255)
  color=rgb|bgr|gray   channel order (default rgb)
  layout=nchw|nhwc     (default nchw)
  pad=V            value of the padding in the normalised units (default 0)
Images are read with Pillow; an unreadable file is an error naming it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgeq.errors import CalibrationError
from edgeq.progress import Progress

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


@dataclass
class Preprocess:
    """How an image becomes one float32 model input."""

    size: tuple[int, int] | None = None
    keep_ratio: bool = False
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    scale: float = 1 / 255
    color: str = "rgb"
    layout: str = "nchw"
    pad: float = 0.0


def _floats(key: str, value: str) -> tuple[float, ...]:
    try:
        out = tuple(float(v) for v in value.split("/"))
    except ValueError:
        raise CalibrationError(f"--preprocess {key}={value}: expected a number or N1/N2/N3") from None
    if len(out) not in (1, 3):
        raise CalibrationError(f"--preprocess {key}={value}: give one value or one per channel")
    return out


def parse_preprocess(spec: str | None) -> Preprocess:
    """Parse the ``--preprocess`` spec (see the module docstring)."""
    p = Preprocess()
    for item in filter(None, (s.strip() for s in (spec or "").split(","))):
        key, sep, value = item.partition("=")
        if not sep:
            raise CalibrationError(f"--preprocess item '{item}' must look like key=value")
        if key == "resize":
            try:
                h, w = (int(v) for v in value.lower().split("x"))
            except ValueError:
                raise CalibrationError(f"--preprocess resize={value}: expected HxW, e.g. 48x320") from None
            if h < 1 or w < 1:
                raise CalibrationError(f"--preprocess resize={value}: sizes must be positive")
            p.size = (h, w)
        elif key == "keep_ratio":
            p.keep_ratio = value not in ("0", "false", "no")
        elif key in ("mean", "std"):
            setattr(p, key, _floats(key, value))
            if key == "std" and any(v == 0 for v in p.std):
                raise CalibrationError("--preprocess std must not be 0")
        elif key in ("scale", "pad"):
            setattr(p, key, _floats(key, value)[0])
        elif key == "color" and value in ("rgb", "bgr", "gray"):
            p.color = value
        elif key == "layout" and value in ("nchw", "nhwc"):
            p.layout = value
        else:
            raise CalibrationError(f"--preprocess: unknown item '{item}' (keys: resize, keep_ratio, mean, std, "
                                   "scale, color=rgb|bgr|gray, layout=nchw|nhwc, pad)")
    if p.keep_ratio and p.size is None:
        raise CalibrationError("--preprocess keep_ratio needs resize=HxW")
    return p


def preprocess_image(img, p: Preprocess) -> np.ndarray:
    """One PIL image -> float32 [C, H, W] (or [H, W, C] for nhwc)."""
    from PIL import Image
    img = img.convert("L" if p.color == "gray" else "RGB")
    if p.size is not None:
        h, w = p.size
        if p.keep_ratio:
            nw = max(1, min(w, round(h * img.width / max(img.height, 1))))
            img = img.resize((nw, h), Image.BILINEAR)
        elif (img.height, img.width) != (h, w):
            img = img.resize((w, h), Image.BILINEAR)
    x = np.asarray(img, np.float32)
    x = x[:, :, None] if x.ndim == 2 else (x[:, :, ::-1] if p.color == "bgr" else x)
    x = (x * p.scale - np.array(p.mean, np.float32)) / np.array(p.std, np.float32)
    if p.size is not None and p.keep_ratio and x.shape[1] < p.size[1]:
        x = np.concatenate([x, np.full((x.shape[0], p.size[1] - x.shape[1], x.shape[2]), p.pad, np.float32)], axis=1)
    return np.ascontiguousarray(x.transpose(2, 0, 1) if p.layout == "nchw" else x, dtype=np.float32)


def load_image_folder(folder: str | Path, spec: str | None, progress: bool = True) -> np.ndarray:
    """Every image in ``folder`` (sorted by name) preprocessed into one float32 batch."""
    from PIL import Image, UnidentifiedImageError
    folder = Path(folder)
    files = sorted(f for f in folder.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise CalibrationError(f"calibration folder '{folder}' has no images ({', '.join(IMAGE_SUFFIXES)})")
    p = parse_preprocess(spec)
    out = []
    with Progress("reading images", len(files), progress) as bar:
        for f in files:
            try:
                with Image.open(f) as img:
                    img.load()
                    out.append(preprocess_image(img, p))
            except (OSError, UnidentifiedImageError, ValueError) as e:
                raise CalibrationError(f"cannot read calibration image '{f}': {type(e).__name__}") from None
            bar.advance(1)
    shapes = {x.shape for x in out}
    if len(shapes) != 1:
        raise CalibrationError(f"calibration images in '{folder}' have different sizes {sorted(shapes)[:3]}; "
                               "pass --preprocess resize=HxW")
    return np.stack(out)
