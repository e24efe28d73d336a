"""TFLite's fixed-point requantization, written out in NumPy: the specification every kernel follows.

All functions work elementwise on integer arrays and compute in int64 so that the reference itself never
overflows; the Numba and C kernels reproduce the same int32 results. See REFERENCE.md section 1 and
gemmlowp's fixedpoint.h for the original definitions.
"""

import numpy as np

INT32_MIN = -(1 << 31)
INT32_MAX = (1 << 31) - 1
ADD_LEFT_SHIFT = 20  # TFLite's headroom for int8 Add: inputs are scaled by 2^20 before rescaling.


def _trunc_shift31(v: np.ndarray) -> np.ndarray:
    """Division by 2^31 rounding toward zero, as C's integer division does."""
    return np.where(v >= 0, v >> 31, -((-v) >> 31))


def saturating_rounding_doubling_high_mul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """gemmlowp SaturatingRoundingDoublingHighMul: round(a * b / 2^31), saturating the one overflow case."""
    a = np.asarray(a, dtype=np.int64)
    b = np.asarray(b, dtype=np.int64)
    ab = a * b
    nudge = np.where(ab >= 0, 1 << 30, 1 - (1 << 30))
    out = _trunc_shift31(ab + nudge)
    overflow = (a == INT32_MIN) & (b == INT32_MIN)
    return np.where(overflow, INT32_MAX, out)


def rounding_divide_by_pot(x: np.ndarray, exponent: np.ndarray) -> np.ndarray:
    """gemmlowp RoundingDivideByPOT: x / 2^exponent rounded half away from zero (exponent >= 0)."""
    x = np.asarray(x, dtype=np.int64)
    exponent = np.asarray(exponent, dtype=np.int64)
    mask = (np.int64(1) << exponent) - 1
    remainder = x & mask
    threshold = (mask >> 1) + (x < 0)
    return (x >> exponent) + (remainder > threshold)


def saturate_int32(x: np.ndarray) -> np.ndarray:
    """Clamp int64 values into the int32 range."""
    return np.clip(x, INT32_MIN, INT32_MAX)


def multiply_by_quantized_multiplier(x: np.ndarray, mult: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """TFLite MultiplyByQuantizedMultiplier: x * mult * 2^shift / 2^31 with TFLite's double rounding.

    ``shift`` > 0 is a left shift applied before the multiply; edgeq saturates that shifted value to
    int32 (TFLite leaves the overflow undefined), so every backend agrees even on hostile scales.
    """
    x = np.asarray(x, dtype=np.int64)
    shift = np.asarray(shift, dtype=np.int64)
    left = np.maximum(shift, 0)
    right = np.maximum(-shift, 0)
    shifted = saturate_int32(x << left)
    return rounding_divide_by_pot(saturating_rounding_doubling_high_mul(shifted, mult), right)


def multiply_by_quantized_multiplier_single(x: np.ndarray, mult: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """x * mult * 2^shift / 2^31 rounded once, half up: (x * mult + 2^(30 - shift)) >> (31 - shift), as the
    int8 FULLY_CONNECTED reference kernel of TFLite (LiteRT) rounds. x is saturated to int32 and shift
    clamped to TFLite's [-31, 30] first, so the int64 arithmetic cannot overflow on any input."""
    x = saturate_int32(np.asarray(x, dtype=np.int64))
    total = 31 - np.clip(np.asarray(shift, dtype=np.int64), -31, 30)
    return (x * np.asarray(mult, dtype=np.int64) + (np.int64(1) << (total - 1))) >> total


def rounded_div(acc: np.ndarray, count: np.ndarray) -> np.ndarray:
    """TFLite's average-pool rounding: divide by count, round half away from zero (count > 0)."""
    acc = np.asarray(acc, dtype=np.int64)
    count = np.asarray(count, dtype=np.int64)
    half = count // 2
    num = np.where(acc > 0, acc + half, acc - half)
    q = np.abs(num) // count
    return np.where(num < 0, -q, q)
