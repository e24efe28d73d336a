"""Read the text in an image with three INT8 edgeq bundles: detection -> crop -> direction -> recognition.

    python apps/ocr/ocr.py convert [--out ocr-bundles]          # PP-OCRv4 det/rec + mobile cls -> .edgeq
    python apps/ocr/ocr.py read IMAGE [--bundles ocr-bundles]   # print the lines found, top to bottom
    python apps/ocr/ocr.py demo [--bundles ocr-bundles]         # render a page, read it, compare

The models come from the rapidocr-onnxruntime wheel; calibration data is rendered text (synth.py).
Running the bundles needs only edgeq's runtime (numpy + the C or Numba backend) and Pillow.
"""

from __future__ import annotations

import argparse
import sys
from collections import deque
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
import synth  # noqa: E402

DET_SIZE = 640       # the det bundle's fixed input (pages are scaled and padded to it)
DET_THRESHOLD = 0.3  # probability of "text" in the detection map
UNCLIP = 1.6         # DB post-processing: the map marks shrunk text kernels; grow boxes back by this ratio
MIN_AREA = 12        # components smaller than this many pixels are noise
CLS_WIDTH = 192
REC_WIDTH = 640      # page lines are long: a wider recognition input than rapidocr's 320 keeps them unsquashed


def convert(out: Path, det_size: int = DET_SIZE, rec_width: int = REC_WIDTH, lines: int = 32, pages: int = 8,
            mixed: bool = True, device: str = "host") -> None:
    """Convert the three models with rendered calibration data; rec gets int16 activations where they
    pay (mixed precision under the default 10% size budget) unless ``mixed`` is False."""
    import edgeq
    paths = synth.model_paths()
    out.mkdir(parents=True, exist_ok=True)
    _, line_x = synth.rec_lines(lines, seed=2, width=rec_width, max_words=6)
    page_x = np.stack([synth.det_page(s, size=det_size)[0] for s in range(pages)])
    jobs = {"det": (page_x, "auto", "off"), "rec": (line_x, "percentile", "auto" if mixed else "off"),
            "cls": (line_x[:, :, :, :CLS_WIDTH], "auto", "off")}
    for name, (calib, method, precision) in jobs.items():
        r = edgeq.convert(paths[name], device=device, output=out / f"{name}.edgeq", calib=calib,
                          calib_method=method, mixed_precision=precision, progress=False)
        wide = r.report.get("mixed_precision", {}).get("int16_tensors", [])
        print(f"{name}: {r.path} ({r.report['bundle_bytes'] // 1024} KiB, calibration {r.report['calibration']['method']}"
              f"{f', {len(wide)} tensors int16' if wide else ''})")


def _components(mask: np.ndarray) -> list[tuple[int, int, int, int, int]]:
    """Bounding boxes (x0, y0, x1, y1, area) of the 4-connected components of a boolean map."""
    seen = np.zeros_like(mask)
    boxes = []
    for y0, x0 in zip(*np.nonzero(mask)):
        if seen[y0, x0]:
            continue
        seen[y0, x0] = True
        queue, area = deque([(y0, x0)]), 0
        ys, xs = [y0, y0], [x0, x0]
        while queue:
            y, x = queue.popleft()
            area += 1
            ys[0], ys[1], xs[0], xs[1] = min(ys[0], y), max(ys[1], y), min(xs[0], x), max(xs[1], x)
            for ny, nx in ((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)):
                if 0 <= ny < mask.shape[0] and 0 <= nx < mask.shape[1] and mask[ny, nx] and not seen[ny, nx]:
                    seen[ny, nx] = True
                    queue.append((ny, nx))
        boxes.append((xs[0], ys[0], xs[1] + 1, ys[1] + 1, area))
    return boxes


def text_boxes(prob: np.ndarray) -> list[tuple[int, int, int, int]]:
    """DB-style boxes from the detection map, grown by the unclip distance area * ratio / perimeter."""
    out = []
    for x0, y0, x1, y1, area in _components(prob > DET_THRESHOLD):
        if area < MIN_AREA:
            continue
        w, h = x1 - x0, y1 - y0
        d = int(round(w * h * UNCLIP / (2 * (w + h))))
        out.append((max(0, x0 - d), max(0, y0 - d), min(prob.shape[1], x1 + d), min(prob.shape[0], y1 + d)))
    return sorted(out, key=lambda b: (b[1] // 8, b[0]))


class _FloatModel:
    """An ONNX model in onnxruntime behind the bundle's run() interface (the fp32 comparison)."""

    def __init__(self, path: Path):
        import onnxruntime as ort
        self.session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        self.outputs = [o.name for o in self.session.get_outputs()]

    def run(self, x: np.ndarray) -> dict[str, np.ndarray]:
        return dict(zip(self.outputs, self.session.run(None, {self.session.get_inputs()[0].name: x})))


class Reader:
    """The three bundles and the glue between them (or, with ``float_models``, the ONNX models in
    onnxruntime at the bundles' input sizes)."""

    def __init__(self, bundles: Path, backend: str = "auto", float_models: dict[str, Path] | None = None):
        import edgeq
        self.det, self.rec, self.cls = (edgeq.load(bundles / f"{k}.edgeq", backend=backend) for k in ("det", "rec", "cls"))
        if "character" not in self.rec.metadata:
            raise ValueError(f"{bundles / 'rec.edgeq'} carries no character list: convert it again")
        self.chars = synth.ctc_classes(self.rec.metadata["character"])
        self.det_size = self.det.graph.tensors[self.det.inputs[0]].shape[2]
        self.rec_width = self.rec.graph.tensors[self.rec.inputs[0]].shape[3]
        if float_models:
            self.det, self.rec, self.cls = (_FloatModel(float_models[k]) for k in ("det", "rec", "cls"))

    def read(self, image: np.ndarray) -> list[tuple[tuple[int, int, int, int], str]]:
        """(box, text) for every line found in an RGB or grey uint8 image, top to bottom."""
        grey = np.asarray(Image.fromarray(image).convert("L"))
        s = self.det_size / max(grey.shape)
        small = Image.fromarray(grey).resize((max(1, round(grey.shape[1] * s)), max(1, round(grey.shape[0] * s))),
                                             Image.BILINEAR)
        page = np.full((self.det_size, self.det_size), 255, np.uint8)
        page[:small.height, :small.width] = np.asarray(small)
        prob = self.det.run(synth.det_input(page)[None])[self.det.outputs[0]][0, 0]
        boxes = [tuple(int(round(v / s)) for v in b) for b in text_boxes(prob[:small.height, :small.width])]
        if not boxes:
            return []
        crops = [grey[y0:y1, x0:x1] for x0, y0, x1, y1 in boxes]
        direction = self.cls.run(np.stack([synth.rec_input(c, CLS_WIDTH) for c in crops]))[self.cls.outputs[0]]
        crops = [np.rot90(c, 2) if p.argmax() == 1 and p.max() > 0.9 else c for c, p in zip(crops, direction)]
        probs = self.rec.run(np.stack([synth.rec_input(c, self.rec_width) for c in crops]))[self.rec.outputs[0]]
        return list(zip(boxes, (t.strip() for t in synth.ctc_decode(probs, self.chars))))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="OCR with edgeq INT8 bundles (PP-OCRv4)")
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("convert", help="convert the three models")
    c.add_argument("--out", type=Path, default=Path("ocr-bundles"))
    c.add_argument("--device", default="host", help="device profile (host, rpi5, ...)")
    c.add_argument("--int8-only", action="store_true", help="rec without int16 activations (mixed precision off)")
    r = sub.add_parser("read", help="read the text in an image")
    r.add_argument("image", type=Path)
    d = sub.add_parser("demo", help="render a page of text, read it, count the lines read exactly")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--pages", type=int, default=1, help="pages seed, seed+1, ...")
    d.add_argument("--fp32", action="store_true", help="also read them with the float ONNX models (onnxruntime)")
    for p in (r, d):
        p.add_argument("--bundles", type=Path, default=Path("ocr-bundles"))
        p.add_argument("--backend", default="auto")
    args = ap.parse_args(argv)
    if args.cmd == "convert":
        convert(args.out, mixed=not args.int8_only, device=args.device)
        return 0
    reader = Reader(args.bundles, args.backend)
    if args.cmd == "read":
        try:
            image = np.asarray(Image.open(args.image).convert("RGB"))
        except OSError as e:
            print(f"ocr: error: cannot read image '{args.image}': {e}", file=sys.stderr)
            return 2
        for box, text in reader.read(image):
            print(f"{box}\t{text}")
        return 0
    readers = {"edgeq": reader}
    if args.fp32:
        readers["onnxruntime fp32"] = Reader(args.bundles, args.backend, float_models=synth.model_paths())
    pages = [synth.render_page(seed) for seed in range(args.seed, args.seed + args.pages)]
    for name, rd in readers.items():
        exact = total = 0
        for image, _, texts in pages:
            found = [t for _, t in rd.read(image)]
            if args.pages == 1 and name == "edgeq":
                print("\n".join(found))
            exact, total = exact + sum(t in found for t in texts), total + len(texts)
        print(f"{name}: {exact} of {total} rendered lines read exactly")
    return 0


if __name__ == "__main__":
    sys.exit(main())
