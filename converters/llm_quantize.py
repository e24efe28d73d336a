"""The LLM weight quantizer (converter side): float matrix -> plane values, scales and offsets of a format.

``runtimes/llm_formats.py`` owns the formats and their byte layouts (:func:`llm_formats.encode`); this
module only chooses the numbers, in three levels of effort:

- **group fits** (:func:`fit_groups`): per group, the scales/offset and codes minimising the squared error
  weighted by an importance per input channel (llama.cpp's imatrix: the mean square of the activation that
  multiplies the weight; uniform without calibration). int8: absmax. int4: Q4_0's scale and a grid around
  it, each refined by weighted least squares. ternary: BitNet b1.58's absmean scale as the base, plus a
  grid of multiples of it, each refined by Lloyd iterations (trits for the scale, the weighted
  least-squares scale for the trits). ptqtp, lut2, lut3: alternating least squares (PTQTP; ELUTQ/HLQ) from
  several starts (residual ternary / uniform 9 levels; min/max with clipping), the best start kept per group.
- **GPTQ** (:func:`gptq`): the columns of a matrix are quantized one at a time and each column's rounding
  error is spread over the not yet quantized columns through the inverse of the calibration Hessian
  ``H = sum x x^T`` (Frantar et al. 2022, lazy batches of 128 columns, 1% damping). By default in
  act-order (largest input energy first) with every group's scales fitted beforehand (as above,
  importance = diag H); GPTQ only changes which codes are chosen, so it serves every format. Then
  :func:`refit_scales` solves each row's scales/offsets jointly for the chosen codes against the damped H.
- :func:`quantize_matrix` picks between them and lays the result out.

All arithmetic is float64 until the scales are rounded to float16, after which the codes are picked for
the rounded scales (the ones the kernels see).
"""

from __future__ import annotations

import numpy as np

from edgeq.runtimes import llm_formats
from edgeq.runtimes.llm_formats import WeightFormat

F32 = np.float32
ALS_ITERS = 6       # alternating least-squares rounds per start (ptqtp, lut)
GPTQ_BLOCK = 128    # columns per lazy GPTQ batch (a multiple of every group size but int8's)
GPTQ_DAMP = 0.01    # Hessian diagonal damping, as a fraction of its mean
CHUNK = 4096        # groups fitted at once (bounds the [groups, group, levels] temporaries)


def f16(a: np.ndarray) -> np.ndarray:
    """Round to float16 (finite), back in float64: the scales the kernels will see."""
    return np.clip(a, -65504, 65504).astype(np.float16).astype(np.float64)


def _safe_div(w: np.ndarray, d: np.ndarray) -> np.ndarray:
    return np.where(d != 0, w / np.where(d != 0, d, 1), 0)


def combos(fmt: WeightFormat) -> np.ndarray:
    """Every tuple of plane values, [n_combos, planes] float64."""
    vals = np.arange(fmt.vmin, fmt.vmax + 1)
    return np.stack(np.meshgrid(*[vals] * fmt.planes, indexing="ij"), -1).reshape(-1, fmt.planes).astype(np.float64)


def levels(d: np.ndarray, m: np.ndarray, table: np.ndarray) -> np.ndarray:
    """The values a group can take, [n, K], for scales d [n, P], offsets m [n] and plane tuples ``table``."""
    return d @ table.T + m[:, None]


class Levels:
    """The values each group can take (``lv[n, K]``), sorted once so that nearest-level lookups are rank
    counts against the midpoints (cheaper than an argmin of |w - level|)."""

    def __init__(self, lv: np.ndarray):
        self.lv = lv
        self.order = np.argsort(lv, axis=1)
        srt = np.take_along_axis(lv, self.order, 1)
        self.mids = (srt[:, 1:] + srt[:, :-1]) * 0.5

    def nearest(self, wg: np.ndarray) -> np.ndarray:
        """Index of the level closest to each weight: wg [n, g] -> [n, g] (ties to the lower level)."""
        rank = np.zeros(wg.shape, np.intp)
        for k in range(self.mids.shape[1]):  # K - 1 flat compares beat one [n, g, K - 1] reduction
            rank += wg > self.mids[:, k:k + 1]
        return np.take_along_axis(self.order, rank, 1)


def nearest(wg: np.ndarray, lv: np.ndarray) -> np.ndarray:
    """Index of the level in lv [n, K] closest to each weight of wg [n, g]."""
    return Levels(lv).nearest(wg)


def weighted_error(wg: np.ndarray, planes: list[np.ndarray], d: np.ndarray, m: np.ndarray,
                   imp: np.ndarray) -> np.ndarray:
    """Per group, sum of imp * (w - sum_p d_p v_p - m)^2 for plane values ``planes[p]`` [n, g]."""
    r = wg - m[:, None]
    for p, v in enumerate(planes):
        r = r - d[:, p:p + 1] * v
    return (imp * r * r).sum(1)


def least_squares(wg: np.ndarray, planes: list[np.ndarray], offset: bool, imp: np.ndarray
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Scales [n, P] (and offsets [n]) minimising each group's imp-weighted squared error for fixed plane
    values ``planes[p]`` [n, g]."""
    cols = list(planes) + ([None] if offset else [])  # None: the offset's column of ones
    k = len(cols)
    wcols = [imp if c is None else imp * c for c in cols]
    ata = np.empty((len(wg), k, k))
    for i in range(k):  # k <= 4: explicit sums beat batched tiny matmuls by far
        for j in range(i, k):
            ata[:, i, j] = ata[:, j, i] = wcols[i].sum(1) if cols[j] is None else (wcols[i] * cols[j]).sum(1)
    atb = np.stack([(c * wg).sum(1) for c in wcols], 1)
    # A tiny ridge keeps groups whose planes coincide (or are empty) solvable.
    ridge = 1e-9 * (np.trace(ata, axis1=1, axis2=2)[:, None, None] + 1e-30) * np.eye(k)
    sol = np.linalg.solve(ata + ridge, atb[..., None])[..., 0]
    return (sol[:, :-1], sol[:, -1]) if offset else (sol, np.zeros(len(wg)))


def _keep_better(best: tuple | None, cand: tuple) -> tuple:
    """Per group, the candidate (v, d, m, err) with the lower error."""
    if best is None:
        return cand
    better = cand[3] < best[3]
    pick = [np.where(better.reshape((-1,) + (1,) * (b.ndim - 1)), c, b) for b, c in zip(best[:3], cand[:3])]
    return (*pick, np.minimum(cand[3], best[3]))


def _round_scale(wg: np.ndarray, d: np.ndarray, vmin: int, vmax: int, imp: np.ndarray) -> tuple:
    """Single-plane symmetric fit for scale d [n]: rounded codes, then the weighted least-squares scale and
    codes again; returns (v, d, m, err) of the better of the two."""
    out = None
    for _ in range(2):
        d = f16(d)
        v = np.clip(np.rint(_safe_div(wg, d[:, None])), vmin, vmax)
        m = np.zeros(len(wg))
        out = _keep_better(out, (v[..., None], d[:, None], m, weighted_error(wg, [v], d[:, None], m, imp)))
        den = (imp * v * v).sum(1)
        d = np.where(den > 0, (imp * wg * v).sum(1) / np.where(den > 0, den, 1), d)
    return out


def _als(wg: np.ndarray, fmt: WeightFormat, table: np.ndarray, d: np.ndarray, m: np.ndarray,
         imp: np.ndarray) -> tuple:
    """Alternate nearest-level codes and least-squares scales from (d, m); finish on float16 scales."""
    def planes(d: np.ndarray, m: np.ndarray) -> list[np.ndarray]:
        idx = nearest(wg, levels(d, m, table))
        return [table[:, p][idx] for p in range(table.shape[1])]

    for _ in range(ALS_ITERS):
        d, m = least_squares(wg, planes(d, m), fmt.offset, imp)
    d, m = f16(d), f16(m)
    v = planes(d, m)
    return np.stack(v, -1), d, m, weighted_error(wg, v, d, m, imp)


def _fit_chunk(wg: np.ndarray, fmt: WeightFormat, imp: np.ndarray) -> tuple:
    n = len(wg)
    zeros = np.zeros(n)
    amax = np.abs(wg).max(1)
    if fmt.name == "int8":
        d = f16(amax / 127)[:, None]
        v = np.clip(np.rint(_safe_div(wg, d)), -127, 127)
        return v[..., None], d, zeros, weighted_error(wg, [v], d, zeros, imp)
    if fmt.name == "int4":
        # Q4_0's scale (the signed max maps to -8), a grid around it, and the all-positive-range variant.
        signed_max = wg[np.arange(n), np.abs(wg).argmax(1)]
        best = None
        for f in (*np.linspace(0.75, 1.1, 15), -16 / 14, -1.0):
            best = _keep_better(best, _round_scale(wg, signed_max / -8 * f, -8, 7, imp))
        return best
    if fmt.name == "ternary":
        # BitNet b1.58's absmean scale is the base; multiples of it cover the error-optimal threshold.
        absmean = np.abs(wg).mean(1)
        best = None
        for f in np.linspace(0.5, 1.6, 12):
            best = _keep_better(best, _round_scale(wg, absmean * f, -1, 1, imp))
        return best
    table = combos(fmt)
    starts = []
    if fmt.name == "ptqtp":
        # A ternary fit plus a ternary fit of its residual (PTQTP's start), and balanced 9-level grids.
        t1 = _fit_chunk(wg, llm_formats.FORMATS["ternary"], imp)
        t2 = _fit_chunk(wg - t1[0][..., 0] * t1[1], llm_formats.FORMATS["ternary"], imp)
        starts.append(np.concatenate([t1[1], t2[1]], 1))
        for top in (4.0, 3.0):
            step = amax / top
            starts.append(np.stack([3 * step, step], 1))
        starts = [(d, zeros) for d in starts]
    else:
        lo, hi = wg.min(1), wg.max(1)
        for clip in (1.0, 0.9, 0.8, 0.7):
            mid, half = (lo + hi) / 2, (hi - lo) / 2 * clip
            step = 2 * half / (2 ** fmt.planes - 1)
            starts.append((step[:, None] * 2.0 ** np.arange(fmt.planes), mid - half))
    best = None
    for d, m in starts:
        best = _keep_better(best, _als(wg, fmt, table, d, m, imp))
    return best


def fit_groups(wg: np.ndarray, fmt: WeightFormat, imp: np.ndarray | None = None
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fit groups ``wg[n, g]`` (float64): values [n, g, P] int8, scales [n, P] and offsets [n] (float64,
    float16-representable), minimising sum imp * error^2 per group (``imp[n, g]``; None = uniform)."""
    imp = np.ones_like(wg) if imp is None else np.broadcast_to(imp, wg.shape)
    # Groups of zero importance (channels calibration never excited) fall back to the plain error.
    dead = imp.sum(1) <= 0
    if dead.any():
        imp = np.where(dead[:, None], 1.0, imp)
    outs = [_fit_chunk(wg[i:i + CHUNK], fmt, imp[i:i + CHUNK]) for i in range(0, len(wg), CHUNK)]
    v, d, m = (np.concatenate([o[k] for o in outs]) for k in range(3))
    return v.astype(np.int8), d, m


def _to_planes(v: np.ndarray, rows: int, cols: int, g: int) -> np.ndarray:
    """[rows * groups, g, P] -> [P, rows, cols]."""
    p = v.shape[-1]
    return v.reshape(rows, cols // g, g, p).transpose(3, 0, 1, 2).reshape(p, rows, cols)


def fit_matrix(w: np.ndarray, fmt: WeightFormat, imp: np.ndarray | None = None
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Group fits of a whole matrix ``w[rows, cols]`` with importance ``imp[cols]`` per input channel:
    values [P, rows, cols], scales [rows, groups * P], offsets [rows, groups]."""
    r, c = w.shape
    g = fmt.group_size(c)
    wg = w.astype(np.float64).reshape(r * (c // g), g)
    ig = None if imp is None else np.tile(np.asarray(imp, np.float64).reshape(c // g, g), (r, 1))
    v, d, m = fit_groups(wg, fmt, ig)
    return _to_planes(v, r, c, g), d.reshape(r, -1), m.reshape(r, -1)


def gptq(w: np.ndarray, hessian: np.ndarray, fmt: WeightFormat, damp: float | None = None, act_order: bool = True
         ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """GPTQ of ``w[rows, cols]`` against ``hessian[cols, cols]`` (sum of x x^T over calibration inputs):
    values [P, rows, cols], scales [rows, groups * P], offsets [rows, groups] of format ``fmt``.

    ``act_order``: quantize the columns with the largest input energy first (GPTQ's act-order) with every
    group's scales fitted beforehand on the original weights ("static groups": a group's columns are no
    longer adjacent in that order); otherwise in column order, each group fitted on the error-updated
    weights when its first column comes up. Either way :func:`refit_scales` finishes.
    """
    r, c = w.shape
    g = fmt.group_size(c)
    damp = GPTQ_DAMP if damp is None else damp
    if GPTQ_BLOCK % g:
        raise ValueError(f"GPTQ needs groups that divide {GPTQ_BLOCK} columns ({fmt.name} has {g})")
    H = np.array(hessian, dtype=np.float64)
    diag = np.diag(H).copy()
    dead = diag <= 0  # inputs that were always zero: their weights do not matter
    imp = np.where(dead, 0.0, diag)
    table = combos(fmt)
    d_all = np.zeros((r, c // g, fmt.planes))
    m_all = np.zeros((r, c // g))
    lv_groups: list[Levels | None] = [None] * (c // g)
    if act_order:
        v0, d0, m0 = fit_matrix(w, fmt, imp)
        d_all, m_all = d0.reshape(r, -1, fmt.planes), m0
        lv_groups = [Levels(levels(d_all[:, k], m_all[:, k], table)) for k in range(c // g)]
    perm = np.argsort(-diag, kind="stable") if act_order else np.arange(c)
    W = w.astype(np.float64)[:, perm]
    H = H[perm][:, perm]
    W[:, dead[perm]] = 0.0
    damp_abs = damp * max(float(np.mean(diag[~dead])) if (~dead).any() else 1.0, 1e-30)
    H[np.diag_indices(c)] += np.where(dead[perm], 1.0, 0.0) + damp_abs
    # Upper Cholesky factor U of H^-1 (H^-1 = U^T U): row j of U carries column j's error to the later ones.
    linv = np.linalg.solve(np.linalg.cholesky(H), np.eye(c))
    U = np.linalg.cholesky(linv.T @ linv).T
    values = np.zeros((fmt.planes, r, c), np.int8)
    rows = np.arange(r)
    for i1 in range(0, c, GPTQ_BLOCK):
        i2 = min(i1 + GPTQ_BLOCK, c)
        W1 = W[:, i1:i2].copy()
        E = np.zeros_like(W1)
        for j in range(i2 - i1):
            col = perm[i1 + j]
            if not act_order and col % g == 0:
                _, d, m = fit_groups(W1[:, j:j + g], fmt, imp[None, col:col + g])
                d_all[:, col // g], m_all[:, col // g] = d, m
                lv_groups[col // g] = Levels(levels(d, m, table))
            lv = lv_groups[col // g]
            idx = lv.nearest(W1[:, j:j + 1])[:, 0]
            values[:, :, col] = table[idx].T
            e = (W1[:, j] - lv.lv[rows, idx]) / U[i1 + j, i1 + j]
            W1[:, j + 1:] -= np.outer(e, U[i1 + j, i1 + j + 1:i2])
            E[:, j] = e
        W[:, i2:] -= E @ U[i1:i2, i2:]
    # The refit sees the damped H too: the bare H is blind in directions calibration never excited (a head
    # whose output stays near zero), where it would accept any scales; damping keeps those near the weights.
    hd = np.asarray(hessian, np.float64) + np.diag(np.where(dead, 1.0, 0.0) + damp_abs)
    d_all, m_all = refit_scales(w, values, hd, fmt, d_all, m_all)
    return values, d_all.reshape(r, -1), m_all


def _h_error(e: np.ndarray, h: np.ndarray) -> np.ndarray:
    """Per row of e [rows, cols], e H e^T: the output error the row causes over the calibration inputs."""
    return np.einsum("rc,rc->r", e @ h, e)


def refit_scales(w: np.ndarray, values: np.ndarray, h: np.ndarray, fmt: WeightFormat, d: np.ndarray,
                 m: np.ndarray, rows_per_chunk: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """For fixed codes, the scales (and offsets) of every group of a row that minimise the row's output
    error ``(w - w_q) H (w - w_q)^T`` jointly (GPTQ fixed each group's scales before seeing its later
    columns; the codes it chose usually deserve other scales). Solves, per row, the normal equations over
    all its groups' parameters; keeps the old float16 scales for rows where the rounded new ones are not
    better. ``d [rows, groups, P]``, ``m [rows, groups]``."""
    planes, r, c = values.shape
    g = fmt.group_size(c)
    n_g, k = c // g, planes + int(fmt.offset)
    d, m = d.copy(), m.copy()
    for r0 in range(0, r, rows_per_chunk):
        rs = slice(r0, min(r0 + rows_per_chunk, r))
        n = rs.stop - r0
        basis = np.concatenate([values[:, rs].astype(np.float64)] + ([np.ones((1, n, c))] if fmt.offset else []))
        b = basis.transpose(2, 1, 0)  # [c, n, k]
        bg = b.reshape(n_g, g, n, k)
        normal = np.empty((n, n_g, k, n_g, k))
        for j in range(n_g):  # H restricted to group j's columns times its basis, seen from every column
            hb = (h[:, j * g:(j + 1) * g] @ bg[j].reshape(g, n * k)).reshape(n_g, g, n, k)
            normal[:, :, :, j, :] = np.matmul(bg.transpose(0, 2, 3, 1), hb.transpose(0, 2, 1, 3)).transpose(1, 0, 2, 3)
        rhs = np.einsum("agnk,nag->nak", bg, (w[rs].astype(np.float64) @ h).reshape(n, n_g, g))
        a = normal.reshape(n, n_g * k, n_g * k)
        a += 1e-9 * (np.trace(a, axis1=1, axis2=2)[:, None, None] + 1e-30) * np.eye(n_g * k)
        sol = np.linalg.solve(a, rhs.reshape(n, -1, 1))[..., 0].reshape(n, n_g, k)
        new_d, new_m = f16(sol[..., :planes]), f16(sol[..., planes]) if fmt.offset else m[rs]

        def deq(dd: np.ndarray, mm: np.ndarray) -> np.ndarray:
            vg = values[:, rs].astype(np.float64).reshape(planes, n, n_g, g)
            return np.einsum("pnag,nap->nag", vg, dd).reshape(n, c) + np.repeat(mm, g, axis=1)

        wr = w[rs].astype(np.float64)
        better = _h_error(wr - deq(new_d, new_m), h) < _h_error(wr - deq(d[rs], m[rs]), h)
        d[rs] = np.where(better[:, None, None], new_d, d[rs])
        m[rs] = np.where(better[:, None], new_m, m[rs])
    return d, m


METHODS = ("gptq", "imatrix", "plain")


def quantize_matrix(w: np.ndarray, fmt_name: str, hessian: np.ndarray | None = None, method: str = "plain",
                    tensor: str = "weight") -> dict[str, np.ndarray]:
    """Quantize ``w[rows, cols]`` into ``fmt_name`` and lay it out (``{"q", "d"[, "m"]}``).

    ``method``: ``plain`` (group fits, uniform importance), ``imatrix`` (group fits weighted by the
    diagonal of ``hessian``), ``gptq`` (GPTQ with ``hessian``; int8, one group per row, gets imatrix fits).
    """
    fmt = llm_formats.check_matrix(w, fmt_name, tensor)
    if method not in METHODS:
        raise ValueError(f"unknown quantization method {method!r}")
    if method != "plain" and hessian is None:
        raise ValueError(f"method {method!r} needs calibration statistics")
    if method == "gptq" and GPTQ_BLOCK % fmt.group_size(w.shape[1]) == 0:
        v, d, m = gptq(w, hessian, fmt)
    else:
        v, d, m = fit_matrix(w, fmt, None if method == "plain" else np.diag(hessian))
    return llm_formats.encode(v, d, m if fmt.offset else None, fmt_name)
