"""apps/ocr end to end: the three PP-OCR bundles read rendered pages about as well as the float models."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

APP = Path(__file__).resolve().parents[1] / "apps" / "ocr"
sys.path.insert(0, str(APP))
import ocr  # noqa: E402
import synth  # noqa: E402

import edgeq  # noqa: E402
from edgeq.errors import BundleError  # noqa: E402


@pytest.fixture(scope="module")
def bundles(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ocr")
    ocr.convert(out, lines=12, pages=2)
    return out


def _exact_lines(reader: ocr.Reader, seeds: range) -> tuple[int, int]:
    exact = total = 0
    for seed in seeds:
        image, _, texts = synth.render_page(seed)
        found = [t for _, t in reader.read(image)]
        exact, total = exact + sum(t in found for t in texts), total + len(texts)
    return exact, total


def test_reads_rendered_pages_like_the_float_models(bundles):
    seeds = range(100, 102)  # pages the calibration did not see
    got, total = _exact_lines(ocr.Reader(bundles), seeds)
    want, _ = _exact_lines(ocr.Reader(bundles, float_models=synth.model_paths()), seeds)
    assert total >= 20
    assert got >= 0.7 * total and got >= want - 3, (got, want, total)


def test_rec_bundle_carries_the_character_list(bundles):
    rec = edgeq.load(bundles / "rec.edgeq")
    assert synth.ctc_classes(rec.metadata["character"]) == synth.charset()
    assert rec.manifest["source"]["metadata"]["character"]  # in the bundle file, not looked up in the ONNX model
    rec.manifest["source"]["metadata"] = {"character": 5}
    with pytest.raises(BundleError, match="metadata"):
        rec.metadata


def test_read_command_prints_lines_and_rejects_a_bad_image(bundles, tmp_path):
    image, _, texts = synth.render_page(3)
    Image.fromarray(image).save(tmp_path / "page.png")
    (tmp_path / "bad.png").write_bytes(b"not a png")
    cmd = [sys.executable, str(APP / "ocr.py"), "read", "--bundles", str(bundles)]
    ok = subprocess.run(cmd + [str(tmp_path / "page.png")], capture_output=True, text=True, cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr
    lines = [line.split("\t")[1] for line in ok.stdout.splitlines()]
    assert sum(t in lines for t in texts) >= 0.7 * len(texts)
    bad = subprocess.run(cmd + [str(tmp_path / "bad.png")], capture_output=True, text=True, cwd=tmp_path)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "bad.png" in bad.stderr
