"""AlphaEarth's int8 quantisation of unit vectors, shared by the store (level 0) and its overviews.

    q = quantise(x)     # float -> int8, NaN -> -128
    x = dequantise(q)   # int8 -> float32, -128 -> NaN

Pure numpy, no I/O: `store` and `overviews` both depend on it, and on nothing of each other's
beyond what they pass as arguments.
"""

from __future__ import annotations

import numpy as np

NODATA_INT8 = -128


def quantise(x: np.ndarray) -> np.ndarray:
    """AlphaEarth int8: q = clip(round(sign(x) sqrt(|x|) 127.5), -127, 127); NaN -> -128.

    Computed in place in one float buffer (a whole tile is 944 MB of float32: each temporary the
    plain expression makes costs as much); copysign after the scaling gives the same bits as
    sign(x) times it, since multiplying by +-1 is exact."""
    q: np.ndarray = np.sqrt(np.abs(x))
    q *= 127.5
    np.copysign(q, x, out=q)
    np.round(q, out=q)
    np.clip(q, -127, 127, out=q)
    q[np.isnan(q)] = NODATA_INT8
    quantised: np.ndarray = q.astype(np.int8)
    return quantised


def _dequantised(q: np.ndarray) -> np.ndarray:
    """x = sign(q) (q / 127.5)^2, with -128 masked to NaN *before* (else it becomes -1.0079)."""
    values = np.sign(q) * (q.astype(np.float32) / np.float32(127.5)) ** 2
    return np.where(q == NODATA_INT8, np.float32(np.nan), values).astype(np.float32)


# The formula above for each of the 256 codes, indexed by the code's bits (q.view(uint8)): a
# lookup gives the same bits as the formula, about 10x faster than its four float passes.
DEQUANTISED = _dequantised(np.arange(256, dtype=np.uint8).view(np.int8))


def dequantise(q: np.ndarray) -> np.ndarray:
    """x = sign(q) (q / 127.5)^2, with -128 masked to NaN *before* (else it becomes -1.0079).
    int8 codes are looked up in DEQUANTISED; any other integer type goes through the formula."""
    codes = np.asarray(q)
    if codes.dtype == np.int8:
        values: np.ndarray = DEQUANTISED[codes.view(np.uint8)]
        return values
    return _dequantised(codes)
