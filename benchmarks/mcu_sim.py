"""Firmware size, memory and instruction counts of edgeq models on every MCU profile, under QEMU.

For each model (the embedded digits CNN; the MobileNetV2-style net of convnets.py at 3x96x96,
layer by layer and with 2x2 patches; the PP-OCR mobile direction classifier at 3x48x192 when --cls or an
installed rapidocr-onnxruntime provides it) and each MCU profile in device_profiles/: `edgeq sim` builds the
generated C with the profile's arm-none-eabi-gcc flags, links against the device's real FLASH/RAM
budgets and runs it under qemu-system-arm; the outputs are checked bit for bit against `edgeq run`
(C backend). Prints a markdown table (and writes JSON with --json FILE).

    python benchmarks/mcu_sim.py [--json mcu.json] [--samples 4] [--cflags="-DEDGEQ_NO_SIMD"] [--cls PATH.onnx]

--cflags adds compiler flags to every firmware build: -DEDGEQ_NO_SIMD turns the Cortex-M DSP kernels
off (the before/after comparison), -DEDGEQ_SCRATCH_BYTES=... etc. override edgeq export's budgets.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

import edgeq
from edgeq.devices import list_devices
from edgeq.errors import EdgeqError
from edgeq.mcu_sim import simulate
from edgeq.sample import load_sample

sys.path.insert(0, str(Path(__file__).parent))
from bench_mcu_memory import _cls_model  # noqa: E402
from convnets import mobilenet_v2_like  # noqa: E402


def _models(tmp: Path, samples: int, cls: Path | None) -> list[tuple[str, Path, dict[str, np.ndarray]]]:
    rng = np.random.default_rng(0)
    digits = tmp / "digits.edgeq"
    edgeq.convert(device="rp2040", output=digits, progress=False)
    out = [("digits_cnn", digits, {"input": load_sample().x_test[:samples]})]
    onnx_bytes = mobilenet_v2_like().SerializeToString()
    calib = rng.standard_normal((32, 3, 96, 96)).astype(np.float32)
    x = {"input": rng.standard_normal((samples, 3, 96, 96)).astype(np.float32)}
    for patch in ("off", 2):
        path = tmp / f"mbv2_{patch}.edgeq"
        edgeq.convert(onnx_bytes, device="rp2040", output=path, calib=calib, progress=False, patch=patch)
        out.append((f"mobilenet_v2_96 (patch {patch})", path, x))
    if cls is not None:  # fixed batch 1 (its ONNX input is N x 3 x ? x ?)
        path = tmp / "ppocr_cls.edgeq"
        edgeq.convert(cls, device="rp2040", output=path, calib=rng.uniform(-1, 1, (16, 3, 48, 192)).astype(np.float32),
                      input_shapes={"x": (1, 3, 48, 192)}, progress=False)
        out.append(("ppocr_cls_48x192", path, {"x": rng.uniform(-1, 1, (1, 3, 48, 192)).astype(np.float32)}))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", help="also write the rows as JSON here")
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--cflags", default="", help="extra compiler flags for the firmware, space separated")
    ap.add_argument("--cls", help="PP-OCR cls ONNX model (default: from rapidocr-onnxruntime if installed)")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, path, inputs in _models(Path(tmp), args.samples, _cls_model(args.cls)):
            want = edgeq.load(path).run(inputs, backend="c")
            for dev in (d for d in list_devices() if d.device_class == "mcu"):
                row = {"model": name, "device": dev.id}
                try:
                    r = simulate(path, dev.id, inputs, timeout=600, extra_cflags=args.cflags.split())
                except EdgeqError as e:
                    row["error"] = str(e)
                else:
                    row.update(r.report, bit_exact=all(np.array_equal(r.outputs[k], want[k]) for k in want))
                rows.append(row)
                print(f"{name} on {dev.id}: {row.get('error') or 'ok'}", file=sys.stderr)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    print("| model | device (QEMU machine) | text | data | bss | flash used / budget | RAM used / budget | arena | "
          "stack used / static bound / reserve | instructions per inference | instr/MAC | bit-exact | sim wall s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        if "error" in r:
            print(f"| {r['model']} | {r['device']} | {r['error']} |" + " |" * 10)
            continue
        e, f, m = r["elf"], r["flash"], r["ram"]
        print(f"| {r['model']} | {r['device']} ({r['emulator'].split()[-1]}) | {e['text']} | {e['data']} | {e['bss']} | "
              f"{f['used_bytes']} / {f['budget_bytes']} | {m['used_bytes']} / {m['budget_bytes']} | {m['arena_bytes']} | "
              f"{m['stack_used_bytes']} / {m['stack_static_bound_bytes']} / {m['stack_reserve_bytes']} | "
              f"{r['instructions']['median']:,} | {r['instructions_per_mac']} | {r['bit_exact']} | {r['sim_wall_s']} |")


if __name__ == "__main__":
    main()
