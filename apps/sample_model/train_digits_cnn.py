"""Train edgeq's bundled sample model: a small CNN on scikit-learn's 8x8 digits, exported to ONNX.

Regenerate the committed artifacts with::

    python apps/sample_model/train_digits_cnn.py

which overwrites ``edgeq/data/digits_cnn.onnx``, ``edgeq/data/digits.npz`` and
``edgeq/data/digits_cnn.json``. Training is plain numpy (hand-written forward/backward, im2col
convolutions, Adam) with fixed seeds, so a rerun on the same machine and library versions rewrites
byte-identical files. Needs numpy, onnx, onnxruntime and scikit-learn; takes a few seconds to a
minute.

The exported graph deliberately keeps unfolded BatchNormalization nodes, a depthwise convolution,
Clip, HardSwish, MaxPool, GlobalAveragePool, Flatten and Gemm: it is a test input for the converter,
which has to fold and quantize all of them.
"""

from __future__ import annotations

import importlib.util
import io
import json
import pathlib
import sys
import time
import zipfile
from collections.abc import Callable
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
DATA_DIR = REPO_ROOT / "edgeq" / "data"
SCRIPT = "apps/sample_model/train_digits_cnn.py"

SEED = 0
EPOCHS = 60
BATCH_SIZE = 32
LEARNING_RATE = 1e-2
BN_MOMENTUM = 0.9  # running = momentum * running + (1 - momentum) * batch, as the ONNX attribute
BN_EPSILON = 1e-5
CALIB_SIZE = 64
TEST_FRACTION = 0.2
OPSET = 17
IR_VERSION = 8  # onnxruntime 1.17 supports at most IR 9; 8 keeps older runtimes working too


def _load_preprocess() -> Callable[[np.ndarray], np.ndarray]:
    # Load edgeq/sample.py by file path: importing the `edgeq` package would pull in whatever its
    # __init__ imports, and the checkout need not be installed.
    spec = importlib.util.spec_from_file_location("_edgeq_sample", REPO_ROOT / "edgeq" / "sample.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # @dataclass resolves string annotations through sys.modules
    spec.loader.exec_module(module)
    return module.preprocess


preprocess = _load_preprocess()

Params = dict[str, np.ndarray]


# --------------------------------------------------------------------------------------------------
# Layers. Activations are NCHW float64; each *_forward returns (output, cache) and the matching
# *_backward takes the cache. float64 keeps training insensitive to summation order.
# --------------------------------------------------------------------------------------------------


def _im2col(x: np.ndarray, k: int, stride: int, pad: int) -> np.ndarray:
    """[N,C,H,W] -> [N,C,k*k,Ho,Wo] patches; a k*k loop of strided slices beats fancy indexing."""
    n, c, h, w = x.shape
    ho = (h + 2 * pad - k) // stride + 1
    wo = (w + 2 * pad - k) // stride + 1
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad))) if pad else x
    cols = np.empty((n, c, k, k, ho, wo), dtype=x.dtype)
    for i in range(k):
        for j in range(k):
            cols[:, :, i, j] = xp[:, :, i : i + stride * ho : stride, j : j + stride * wo : stride]
    return cols.reshape(n, c, k * k, ho, wo)


def _col2im(dcols: np.ndarray, x_shape: tuple[int, ...], k: int, stride: int, pad: int) -> np.ndarray:
    """Adjoint of :func:`_im2col`: scatter-add patch gradients back onto the input."""
    n, c, h, w = x_shape
    ho, wo = dcols.shape[-2:]
    dcols = dcols.reshape(n, c, k, k, ho, wo)
    dxp = np.zeros((n, c, h + 2 * pad, w + 2 * pad), dtype=dcols.dtype)
    for i in range(k):
        for j in range(k):
            dxp[:, :, i : i + stride * ho : stride, j : j + stride * wo : stride] += dcols[:, :, i, j]
    return dxp[:, :, pad : pad + h, pad : pad + w]


def _conv_forward(
    x: np.ndarray, w: np.ndarray, b: np.ndarray | None, stride: int, pad: int, depthwise: bool
) -> tuple[np.ndarray, tuple[Any, ...]]:
    n = x.shape[0]
    o, _, k, _ = w.shape
    cols = _im2col(x, k, stride, pad)
    _, c, kk, ho, wo = cols.shape
    if depthwise:
        out = np.einsum("nckhw,ck->nchw", cols, w.reshape(o, kk))
    else:
        out = (w.reshape(o, c * kk) @ cols.reshape(n, c * kk, ho * wo)).reshape(n, o, ho, wo)
    if b is not None:
        out += b[None, :, None, None]
    return out, (x.shape, w, cols, stride, pad, depthwise)


def _conv_backward(
    dout: np.ndarray, cache: tuple[Any, ...], need_dx: bool = True
) -> tuple[np.ndarray | None, np.ndarray, np.ndarray]:
    x_shape, w, cols, stride, pad, depthwise = cache
    n = dout.shape[0]
    o, _, k, _ = w.shape
    _, c, kk, ho, wo = cols.shape
    db = dout.sum(axis=(0, 2, 3))
    if depthwise:
        dw = np.einsum("nchw,nckhw->ck", dout, cols).reshape(w.shape)
        dcols = np.einsum("nchw,ck->nckhw", dout, w.reshape(o, kk)) if need_dx else None
    else:
        d2 = dout.reshape(n, o, ho * wo)
        c2 = cols.reshape(n, c * kk, ho * wo)
        dw = (d2 @ c2.transpose(0, 2, 1)).sum(axis=0).reshape(w.shape)
        dcols = (w.reshape(o, c * kk).T @ d2).reshape(n, c, kk, ho, wo) if need_dx else None
    dx = _col2im(dcols, x_shape, k, stride, pad) if dcols is not None else None
    return dx, dw, db


def _bn_forward(
    x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, mean: np.ndarray, var: np.ndarray, train: bool
) -> tuple[np.ndarray, tuple[Any, ...]]:
    """Training mode uses batch statistics and updates ``mean``/``var`` (running averages) in place."""
    if train:
        m = x.shape[0] * x.shape[2] * x.shape[3]
        mu = x.mean(axis=(0, 2, 3))
        sigma2 = x.var(axis=(0, 2, 3))
        # Unbiased variance for the running estimate, as PyTorch does, so exported stats match a
        # model trained there.
        mean *= BN_MOMENTUM
        mean += (1.0 - BN_MOMENTUM) * mu
        var *= BN_MOMENTUM
        var += (1.0 - BN_MOMENTUM) * sigma2 * m / (m - 1)
    else:
        mu, sigma2 = mean, var
    inv_std = 1.0 / np.sqrt(sigma2 + BN_EPSILON)
    xhat = (x - mu[None, :, None, None]) * inv_std[None, :, None, None]
    return gamma[None, :, None, None] * xhat + beta[None, :, None, None], (xhat, gamma, inv_std)


def _bn_backward(dy: np.ndarray, cache: tuple[Any, ...]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    xhat, gamma, inv_std = cache
    m = dy.shape[0] * dy.shape[2] * dy.shape[3]
    dgamma = (dy * xhat).sum(axis=(0, 2, 3))
    dbeta = dy.sum(axis=(0, 2, 3))
    dxhat = dy * gamma[None, :, None, None]
    dx = (
        m * dxhat
        - dxhat.sum(axis=(0, 2, 3))[None, :, None, None]
        - xhat * (dxhat * xhat).sum(axis=(0, 2, 3))[None, :, None, None]
    ) * (inv_std / m)[None, :, None, None]
    return dx, dgamma, dbeta


def _hardswish(x: np.ndarray) -> np.ndarray:
    # ONNX HardSwish: x * max(0, min(1, x/6 + 1/2)).
    return x * np.clip(x / 6.0 + 0.5, 0.0, 1.0)


def _hardswish_grad(x: np.ndarray) -> np.ndarray:
    return np.where(x <= -3.0, 0.0, np.where(x >= 3.0, 1.0, x / 3.0 + 0.5))


def _maxpool2_forward(x: np.ndarray) -> tuple[np.ndarray, tuple[Any, ...]]:
    n, c, h, w = x.shape
    windows = x.reshape(n, c, h // 2, 2, w // 2, 2).transpose(0, 1, 2, 4, 3, 5)
    windows = windows.reshape(n, c, h // 2, w // 2, 4)
    idx = windows.argmax(axis=-1)[..., None]
    return np.take_along_axis(windows, idx, axis=-1)[..., 0], (x.shape, idx)


def _maxpool2_backward(dout: np.ndarray, cache: tuple[Any, ...]) -> np.ndarray:
    (n, c, h, w), idx = cache
    dwin = np.zeros((n, c, h // 2, w // 2, 4), dtype=dout.dtype)
    np.put_along_axis(dwin, idx, dout[..., None], axis=-1)
    return dwin.reshape(n, c, h // 2, w // 2, 2, 2).transpose(0, 1, 2, 4, 3, 5).reshape(n, c, h, w)


# --------------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------------

BN_LAYERS = ("bn1", "bn2", "bn3")


def init_params(rng: np.random.Generator) -> tuple[Params, Params]:
    """He-initialise the trainable parameters and the BatchNorm running statistics.

    Convolutions followed by BatchNormalization have no bias: BN's beta makes it redundant (its
    gradient through training-mode BN is exactly zero), which is also how such layers are usually
    exported from PyTorch.

    Args:
        rng: source of randomness for the weights.

    Returns:
        ``(params, bn_stats)``; ``bn_stats`` maps ``"<bn>.mean"``/``"<bn>.var"`` to float64 vectors.
    """

    def he(shape: tuple[int, ...], fan_in: int) -> np.ndarray:
        return rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)

    params: Params = {
        "conv1.weight": he((8, 1, 3, 3), 9),
        "dw.weight": he((8, 1, 3, 3), 9),
        "pw.weight": he((16, 8, 1, 1), 8),
        "conv4.weight": he((32, 16, 3, 3), 144),
        "conv4.bias": np.zeros(32),
        "fc.weight": rng.standard_normal((10, 32)) * np.sqrt(1.0 / 32),
        "fc.bias": np.zeros(10),
    }
    stats: Params = {}
    for name, channels in zip(BN_LAYERS, (8, 8, 16)):
        params[f"{name}.weight"] = np.ones(channels)
        params[f"{name}.bias"] = np.zeros(channels)
        stats[f"{name}.mean"] = np.zeros(channels)
        stats[f"{name}.var"] = np.ones(channels)
    return params, stats


def forward(params: Params, stats: Params, x: np.ndarray, train: bool) -> tuple[np.ndarray, list[Any]]:
    """Run the network; the same op sequence as the exported ONNX graph.

    Args:
        params: trainable parameters from :func:`init_params`.
        stats: BatchNorm running statistics; updated in place when ``train`` is true.
        x: [N,1,16,16] preprocessed inputs.
        train: use batch statistics in BatchNorm (and update the running ones) instead of running ones.

    Returns:
        ``(logits [N,10], cache)``; the cache feeds :func:`backward`.
    """
    p = params

    def bn(h: np.ndarray, name: str) -> tuple[np.ndarray, tuple[Any, ...]]:
        gamma, beta = p[f"{name}.weight"], p[f"{name}.bias"]
        return _bn_forward(h, gamma, beta, stats[f"{name}.mean"], stats[f"{name}.var"], train)

    h1, c1 = _conv_forward(x, p["conv1.weight"], None, stride=1, pad=1, depthwise=False)
    b1, cb1 = bn(h1, "bn1")
    a1 = np.maximum(b1, 0.0)
    h2, c2 = _conv_forward(a1, p["dw.weight"], None, stride=2, pad=1, depthwise=True)
    b2, cb2 = bn(h2, "bn2")
    a2 = np.clip(b2, 0.0, 6.0)
    h3, c3 = _conv_forward(a2, p["pw.weight"], None, stride=1, pad=0, depthwise=False)
    b3, cb3 = bn(h3, "bn3")
    a3 = _hardswish(b3)
    m3, cm3 = _maxpool2_forward(a3)
    h4, c4 = _conv_forward(m3, p["conv4.weight"], p["conv4.bias"], stride=1, pad=1, depthwise=False)
    a4 = np.maximum(h4, 0.0)
    feat = a4.mean(axis=(2, 3))
    logits = feat @ p["fc.weight"].T + p["fc.bias"]
    cache = [c1, cb1, b1, c2, cb2, b2, c3, cb3, b3, cm3, c4, h4, feat]
    return logits, cache


def backward(params: Params, cache: list[Any], dlogits: np.ndarray) -> Params:
    """Gradients of the loss w.r.t. every parameter, given d(loss)/d(logits) from a training-mode pass.

    Args:
        params: the parameters used by the forward pass.
        cache: the cache returned by :func:`forward` with ``train=True``.
        dlogits: [N,10] gradient of the loss with respect to the logits.

    Returns:
        A dict with the same keys and shapes as ``params``.
    """
    c1, cb1, b1, c2, cb2, b2, c3, cb3, b3, cm3, c4, h4, feat = cache
    g: Params = {}
    g["fc.weight"] = dlogits.T @ feat
    g["fc.bias"] = dlogits.sum(axis=0)
    dfeat = dlogits @ params["fc.weight"]
    hw = h4.shape[2] * h4.shape[3]
    da4 = np.broadcast_to(dfeat[:, :, None, None] / hw, h4.shape)
    dh4 = da4 * (h4 > 0.0)
    dm3, g["conv4.weight"], g["conv4.bias"] = _conv_backward(dh4, c4)
    da3 = _maxpool2_backward(dm3, cm3)
    db3 = da3 * _hardswish_grad(b3)
    dh3, g["bn3.weight"], g["bn3.bias"] = _bn_backward(db3, cb3)
    da2, g["pw.weight"], _ = _conv_backward(dh3, c3)
    db2 = da2 * ((b2 > 0.0) & (b2 < 6.0))
    dh2, g["bn2.weight"], g["bn2.bias"] = _bn_backward(db2, cb2)
    da1, g["dw.weight"], _ = _conv_backward(dh2, c2)
    db1 = da1 * (b1 > 0.0)
    dh1, g["bn1.weight"], g["bn1.bias"] = _bn_backward(db1, cb1)
    _, g["conv1.weight"], _ = _conv_backward(dh1, c1, need_dx=False)
    return g


def softmax_cross_entropy(logits: np.ndarray, labels: np.ndarray) -> tuple[float, np.ndarray]:
    """Mean cross-entropy and its gradient with respect to the logits.

    Args:
        logits: [N,10] raw scores.
        labels: [N] integer class ids.

    Returns:
        ``(loss, dlogits)``.
    """
    z = logits - logits.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    n = labels.shape[0]
    loss = -float(logp[np.arange(n), labels].mean())
    dlogits = np.exp(logp)
    dlogits[np.arange(n), labels] -= 1.0
    return loss, dlogits / n


def train(x: np.ndarray, y: np.ndarray, seed: int = SEED, epochs: int = EPOCHS) -> tuple[Params, Params]:
    """Train with Adam, mini-batches and a cosine learning-rate decay.

    Args:
        x: [N,1,16,16] preprocessed training inputs.
        y: [N] labels.
        seed: seeds weight initialisation and batch shuffling.
        epochs: passes over the training set.

    Returns:
        ``(params, bn_stats)`` in float64.
    """
    rng = np.random.default_rng(seed)
    params, stats = init_params(rng)
    adam_m = {k: np.zeros_like(v) for k, v in params.items()}
    adam_v = {k: np.zeros_like(v) for k, v in params.items()}
    beta1, beta2, eps = 0.9, 0.999, 1e-8
    steps_per_epoch = -(-x.shape[0] // BATCH_SIZE)
    total_steps = epochs * steps_per_epoch
    step = 0
    for epoch in range(epochs):
        order = rng.permutation(x.shape[0])
        losses = []
        for start in range(0, x.shape[0], BATCH_SIZE):
            batch = order[start : start + BATCH_SIZE]
            logits, cache = forward(params, stats, x[batch], train=True)
            loss, dlogits = softmax_cross_entropy(logits, y[batch])
            grads = backward(params, cache, dlogits)
            # Decay to ~0 so the BN running averages settle on the final weights.
            lr = LEARNING_RATE * 0.5 * (1.0 + np.cos(np.pi * step / total_steps))
            step += 1
            for k, grad in grads.items():
                adam_m[k] = beta1 * adam_m[k] + (1.0 - beta1) * grad
                adam_v[k] = beta2 * adam_v[k] + (1.0 - beta2) * grad * grad
                m_hat = adam_m[k] / (1.0 - beta1**step)
                v_hat = adam_v[k] / (1.0 - beta2**step)
                params[k] = params[k] - lr * m_hat / (np.sqrt(v_hat) + eps)
            losses.append(loss)
        if epoch % 5 == 4 or epoch == epochs - 1:
            print(f"epoch {epoch + 1:3d}/{epochs}  loss {np.mean(losses):.4f}")
    return params, stats


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy in percent."""
    return 100.0 * float((logits.argmax(axis=1) == labels).mean())


# --------------------------------------------------------------------------------------------------
# Export
# --------------------------------------------------------------------------------------------------


def export_onnx(params: Params, stats: Params) -> onnx.ModelProto:
    """Build the float32 ONNX model (opset 17, IR 8) with real, unfolded BatchNormalization nodes.

    Args:
        params: trained parameters.
        stats: BatchNorm running statistics.

    Returns:
        A checked :class:`onnx.ModelProto` with input ``"input"`` [N,1,16,16] and output
        ``"logits"`` [N,10].
    """
    tensors = {**params, **stats}
    init = [numpy_helper.from_array(np.asarray(v, dtype=np.float32), k) for k, v in tensors.items()]
    # Clip takes min/max as inputs since opset 11; they are scalars.
    init.append(numpy_helper.from_array(np.array(0.0, dtype=np.float32), "clip.min"))
    init.append(numpy_helper.from_array(np.array(6.0, dtype=np.float32), "clip.max"))

    def bn(name: str, src: str, dst: str) -> onnx.NodeProto:
        inputs = [src, f"{name}.weight", f"{name}.bias", f"{name}.mean", f"{name}.var"]
        return helper.make_node(
            "BatchNormalization", inputs, [dst], name=name, epsilon=BN_EPSILON, momentum=BN_MOMENTUM
        )

    def conv(name: str, inputs: list[str], k: int, stride: int, pad: int, group: int = 1) -> onnx.NodeProto:
        attrs = {"kernel_shape": [k, k], "strides": [stride, stride], "pads": [pad] * 4, "group": group}
        return helper.make_node("Conv", inputs, [name], name=name, **attrs)

    nodes = [
        conv("conv1", ["input", "conv1.weight"], k=3, stride=1, pad=1),
        bn("bn1", "conv1", "bn1"),
        helper.make_node("Relu", ["bn1"], ["relu1"], name="relu1"),
        conv("dw", ["relu1", "dw.weight"], k=3, stride=2, pad=1, group=8),
        bn("bn2", "dw", "bn2"),
        helper.make_node("Clip", ["bn2", "clip.min", "clip.max"], ["clip2"], name="clip2"),
        conv("pw", ["clip2", "pw.weight"], k=1, stride=1, pad=0),
        bn("bn3", "pw", "bn3"),
        helper.make_node("HardSwish", ["bn3"], ["hswish3"], name="hswish3"),
        helper.make_node("MaxPool", ["hswish3"], ["pool3"], name="pool3", kernel_shape=[2, 2], strides=[2, 2]),
        conv("conv4", ["pool3", "conv4.weight", "conv4.bias"], k=3, stride=1, pad=1),
        helper.make_node("Relu", ["conv4"], ["relu4"], name="relu4"),
        helper.make_node("GlobalAveragePool", ["relu4"], ["gap"], name="gap"),
        helper.make_node("Flatten", ["gap"], ["flat"], name="flatten", axis=1),
        helper.make_node("Gemm", ["flat", "fc.weight", "fc.bias"], ["logits"], name="fc", transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "digits_cnn",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 1, 16, 16])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])],
        initializer=init,
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        ir_version=IR_VERSION,
        producer_name="edgeq-sample",
        doc_string=f"Digits CNN (sklearn load_digits, 16x16 input); regenerate with `python {SCRIPT}`.",
    )
    onnx.checker.check_model(model, full_check=True)
    return model


def write_npz(path: pathlib.Path, arrays: dict[str, np.ndarray]) -> None:
    """Write an ``np.load``-compatible .npz with fixed zip timestamps, unlike ``np.savez``.

    Stored (uncompressed) so the bytes do not depend on the zlib build either.

    Args:
        path: destination file, overwritten.
        arrays: name -> array, written in insertion order.
    """
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
        for name, arr in arrays.items():
            payload = io.BytesIO()
            np.lib.format.write_array(payload, np.ascontiguousarray(arr), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            zf.writestr(info, payload.getvalue())
    path.write_bytes(buf.getvalue())


def main() -> None:
    """Train, export, verify against onnxruntime and write the three artifacts to edgeq/data."""
    digits = load_digits()
    raw = digits.images[:, None, :, :]
    assert np.array_equal(raw, np.round(raw)) and raw.min() >= 0 and raw.max() <= 16
    raw = raw.astype(np.uint8)
    labels = digits.target.astype(np.int64)
    # train_test_split's own shuffle (random_state=0) is the fixed shuffle; calibration is the
    # first CALIB_SIZE training samples, so it never overlaps the held-out split.
    train_raw, test_raw, y_train, y_test = train_test_split(
        raw, labels, test_size=TEST_FRACTION, stratify=labels, random_state=SEED
    )
    calib_raw = train_raw[:CALIB_SIZE]
    x_train = preprocess(train_raw).astype(np.float64)
    x_test = preprocess(test_raw)
    print(f"train {x_train.shape[0]}  test {x_test.shape[0]}  calib {calib_raw.shape[0]}")

    t0 = time.perf_counter()
    params, stats = train(x_train, y_train)
    train_seconds = time.perf_counter() - t0
    print(f"training took {train_seconds:.1f} s")

    # Evaluate numpy with the float32-rounded weights that go into the ONNX file.
    params32 = {k: v.astype(np.float32).astype(np.float64) for k, v in params.items()}
    stats32 = {k: v.astype(np.float32).astype(np.float64) for k, v in stats.items()}
    np_logits, _ = forward(params32, stats32, x_test.astype(np.float64), train=False)
    np_acc = accuracy(np_logits, y_test)

    model = export_onnx(params, stats)
    model_bytes = model.SerializeToString()
    session = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    (ort_logits,) = session.run(["logits"], {"input": x_test})
    ort_acc = accuracy(ort_logits, y_test)
    max_diff = float(np.abs(ort_logits - np_logits).max())
    n_weights = sum(int(np.prod(t.dims)) for t in model.graph.initializer)
    print(f"numpy eval accuracy {np_acc:.2f}%  onnxruntime {ort_acc:.2f}%  max |dlogit| {max_diff:.2e}")
    print(f"{n_weights} float32 weights = {4 * n_weights} bytes")
    if abs(ort_acc - np_acc) > 0.1:
        sys.exit(f"onnxruntime accuracy {ort_acc:.2f}% differs from numpy {np_acc:.2f}%")
    if ort_acc < 95.0:
        sys.exit(f"held-out accuracy {ort_acc:.2f}% is below the 95% target")

    DATA_DIR.mkdir(parents=True, exist_ok=True)
    (DATA_DIR / "digits_cnn.onnx").write_bytes(model_bytes)
    write_npz(DATA_DIR / "digits.npz", {"calib_raw": calib_raw, "test_raw": test_raw, "test_labels": y_test})
    meta = {
        "float_accuracy": round(ort_acc, 2),
        "test_samples": int(x_test.shape[0]),
        "train_samples": int(x_train.shape[0]),
        "seed": SEED,
        "epochs": EPOCHS,
        "script": SCRIPT,
    }
    (DATA_DIR / "digits_cnn.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    for name in ("digits_cnn.onnx", "digits.npz", "digits_cnn.json"):
        print(f"wrote {DATA_DIR / name} ({(DATA_DIR / name).stat().st_size} bytes)")


if __name__ == "__main__":
    main()
