"""Rendered text for PP-OCR: text-line images for recognition, pages for detection, and the models'
pre- and post-processing (rapidocr's conventions). Nothing is downloaded: words come from the Python
standard library's documentation topics, glyphs from Pillow's built-in font.

    texts, x = rec_lines(200, seed=1)      # x: float32 [200, 3, 48, 320], BGR in [-1, 1]
    page, boxes = det_page(seed=0)         # page: float32 [3, 640, 640] (ImageNet-normalised)
    ctc_decode(logits, charset(rec_model)) # greedy CTC -> list of strings
"""

from __future__ import annotations

import importlib.util
import random
import re
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

REC_HEIGHT, REC_WIDTH = 48, 320
DET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
DET_STD = np.array([0.229, 0.224, 0.225], np.float32)


def model_dir() -> Path:
    """Where the rapidocr-onnxruntime wheel keeps its three ONNX models."""
    spec = importlib.util.find_spec("rapidocr_onnxruntime")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("rapidocr-onnxruntime is not installed (pip install rapidocr-onnxruntime)")
    return Path(list(spec.submodule_search_locations)[0]) / "models"


def model_paths() -> dict[str, Path]:
    """The det, rec and cls ONNX files."""
    d = model_dir()
    return {"det": d / "ch_PP-OCRv4_det_infer.onnx", "rec": d / "ch_PP-OCRv4_rec_infer.onnx",
            "cls": d / "ch_ppocr_mobile_v2.0_cls_infer.onnx"}


def words() -> list[str]:
    """An English vocabulary from pydoc's topics (shipped with Python)."""
    from pydoc_data.topics import topics
    return sorted(set(re.findall(r"[A-Za-z][a-z]{2,11}", " ".join(topics.values()))))


def render_line(text: str, size: int = 30, rng: random.Random | None = None) -> np.ndarray:
    """A grey image (height 48) of one line of dark text on a light background."""
    rng = rng or random.Random(0)
    font = ImageFont.load_default(size=size)
    img = Image.new("L", (int(font.getlength(text)) + 16, REC_HEIGHT), color=rng.randint(200, 255))
    ImageDraw.Draw(img).text((8, REC_HEIGHT // 2), text, fill=rng.randint(0, 60), font=font, anchor="lm")
    return np.asarray(img)


def rec_input(image: np.ndarray, width: int = REC_WIDTH) -> np.ndarray:
    """rapidocr's recognition preprocessing: height 48 keeping the aspect ratio, padded to ``width``,
    scaled to [-1, 1], CHW with three channels (a grey or BGR uint8 image)."""
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    h, w = image.shape[:2]
    nw = max(1, min(width, int(np.ceil(REC_HEIGHT * w / h))))
    resized = np.asarray(Image.fromarray(image).resize((nw, REC_HEIGHT), Image.BILINEAR), np.float32) / 255.0
    x = np.zeros((3, REC_HEIGHT, width), np.float32)
    x[:, :, :nw] = ((resized - 0.5) / 0.5).transpose(2, 0, 1)
    return x


def rec_lines(n: int, seed: int = 0, width: int = REC_WIDTH, max_words: int = 3) -> tuple[list[str], np.ndarray]:
    """``n`` random lines of 1..max_words words and their model inputs [n, 3, 48, width]."""
    rng, vocab = random.Random(seed), words()
    texts = [" ".join(rng.choice(vocab) for _ in range(rng.randint(1, max_words))) for _ in range(n)]
    return texts, np.stack([rec_input(render_line(t, rng=rng), width) for t in texts])


def det_page(seed: int = 0, size: int = 640) -> tuple[np.ndarray, list[tuple[int, int, int, int]]]:
    """A page of random text lines (float32 [3, size, size], ImageNet-normalised) and the line boxes
    (x0, y0, x1, y1)."""
    image, boxes, _ = render_page(seed, size)
    return det_input(image), boxes


def render_page(seed: int = 0, size: int = 640) -> tuple[np.ndarray, list[tuple[int, int, int, int]], list[str]]:
    """A grey uint8 page of random text lines, their boxes (x0, y0, x1, y1) and their texts."""
    rng, vocab = random.Random(seed), words()
    img = Image.new("L", (size, size), color=rng.randint(200, 255))
    draw = ImageDraw.Draw(img)
    boxes, texts = [], []
    for y in range(max(4, size // 32), size - size // 16, max(12, size * 3 // 40)):
        font = ImageFont.load_default(size=rng.randint(max(8, size // 36), max(9, size // 21)))
        text = " ".join(rng.choice(vocab) for _ in range(rng.randint(2, 6)))
        x = rng.randint(2, max(3, size // 10))
        draw.text((x, y), text, fill=rng.randint(0, 60), font=font)
        boxes.append(tuple(int(v) for v in draw.textbbox((x, y), text, font=font)))
        texts.append(text)
    return np.asarray(img), boxes, texts


def det_input(image: np.ndarray) -> np.ndarray:
    """Detection preprocessing of a grey or RGB uint8 image: [0, 1], ImageNet mean/std, CHW."""
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    x = (image.astype(np.float32) / 255.0 - DET_MEAN) / DET_STD
    return x.transpose(2, 0, 1).astype(np.float32)


def ctc_classes(character: str) -> list[str]:
    """PP-OCR's recognition classes: blank, the lines of its ``character`` metadata, space."""
    return ["blank"] + character.splitlines() + [" "]


def charset(rec_model: str | Path | None = None) -> list[str]:
    """The recognition classes from the ONNX model's metadata (a converted bundle carries the same
    metadata: ``ctc_classes(bundle.metadata["character"])``)."""
    import onnx
    model = onnx.load(str(rec_model or model_paths()["rec"]), load_external_data=False)
    return ctc_classes({p.key: p.value for p in model.metadata_props}["character"])


def ctc_decode(probs: np.ndarray, chars: list[str]) -> list[str]:
    """Greedy CTC: best class per step, repeats merged, blanks (class 0) dropped; probs [N, T, C]."""
    out = []
    for seq in np.asarray(probs).argmax(-1):
        keep = np.ones(len(seq), bool)
        keep[1:] = seq[1:] != seq[:-1]
        out.append("".join(chars[i] for i in seq[keep & (seq != 0)]))
    return out
