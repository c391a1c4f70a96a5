"""Exact statistics of float32 values that arrive in chunks and never sit in memory together (the per-token
entropies of a corpus, read back shard by shard): ``np.quantile`` (linear method) to the bit, and ``np.histogram``.

The quantile is a radix selection in two passes over the chunks. Each float32 maps to a 32-bit key that sorts like
the value; pass 1 counts keys by their high 16 bits, which places the one or two order statistics the quantile
interpolates between in a high-bits bucket each; pass 2 counts the low 16 bits inside those buckets, which gives
the values exactly, whatever their distribution (ties included). Memory: two 65,536-bin tables. The virtual
index, the weight and the interpolation are numpy's own helpers (``numpy/lib/_function_base_impl.py``: the linear
method's ``get_virtual_index``, ``_get_gamma``, ``_lerp``; numpy 2.3 computes the index in float32, 2.4 in
float64, so no formula of our own matches both). They are private: a test holds the result to ``np.quantile`` on
the concatenated values, and a numpy without them gets the documented formula in float64 (``_fallback_ranks``,
within an ulp), not an import error.
"""

from __future__ import annotations

import math

import numpy as np

try:  # np.quantile's own arithmetic (private helpers)
    from numpy.lib import _function_base_impl as _np_quantile

    _LINEAR = _np_quantile._QuantileMethods["linear"]
    _get_gamma, _np_lerp = _np_quantile._get_gamma, _np_quantile._lerp
except (ImportError, AttributeError, KeyError):  # a numpy that moved them
    _LINEAR = None

_BINS = 1 << 16


def _keys(values: np.ndarray) -> np.ndarray:
    """uint32 keys in the order of the float32 values (NaN excluded by the caller)."""
    bits = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32)
    return np.where(bits & np.uint32(0x80000000), ~bits, bits | np.uint32(0x80000000))


def _value(key: int) -> np.float32:
    bits = key & 0x7FFFFFFF if key & 0x80000000 else ~key & 0xFFFFFFFF
    return np.array([bits], dtype=np.uint32).view(np.float32)[0]


class ExactQuantile:
    """``np.quantile(all values, q)``: feed every chunk to ``count`` (pass 1), then every chunk again to ``refine``
    (pass 2), then read ``value``. NaNs are not allowed in the chunks."""

    def __init__(self, q: float):
        if not 0.0 <= q <= 1.0:
            raise ValueError(f"quantile must be in [0, 1], got {q}")
        self.q = q
        self.n = 0
        self._high = np.zeros(_BINS, dtype=np.int64)
        self._targets: list[tuple[int, int]] | None = None  # (rank, its high bucket) x 2, fixed after pass 1
        self._low: dict[int, np.ndarray] = {}

    def count(self, values: np.ndarray) -> None:
        if self._targets is not None:
            raise RuntimeError("count() after refine(): pass 1 is over")
        keys = _keys(values)
        self._high += np.bincount(keys >> 16, minlength=_BINS)
        self.n += len(keys)

    def _ranks(self) -> tuple[int, int, np.ndarray | float]:
        """numpy's linear method, through numpy's own helpers: the two order statistics to interpolate between and
        the weight. ``np.quantile`` gives a Python-float ``q`` the values' dtype (float32) before it computes the
        virtual index, so numpy's own dtype rules decide the index's and the weight's precision."""
        n = self.n
        if _LINEAR is None:
            return _fallback_ranks(n, self.q)
        virtual = _LINEAR["get_virtual_index"](n, np.asanyarray(self.q, dtype=np.float32))
        below, above = np.floor(virtual), np.floor(virtual) + 1
        gamma = _get_gamma(virtual, below, _LINEAR)
        if virtual >= n - 1:
            below = above = n - 1
        elif virtual < 0:
            below = above = 0
        return int(below), int(above), gamma

    def _start_refine(self) -> None:
        if self.n == 0:
            raise ValueError("quantile of no values")
        below, above, self._gamma = self._ranks()
        cum = np.cumsum(self._high)
        self._targets = [(r, int(np.searchsorted(cum, r, side="right"))) for r in (below, above)]
        self._low = {b: np.zeros(_BINS, dtype=np.int64) for b in {b for _, b in self._targets}}

    def refine(self, values: np.ndarray) -> None:
        if self._targets is None:
            self._start_refine()
        keys = _keys(values)
        high = keys >> 16
        for bucket, table in self._low.items():
            table += np.bincount(keys[high == bucket] & 0xFFFF, minlength=_BINS)

    def value(self) -> np.float32:
        if self._targets is None:
            self._start_refine()
        cum_high = np.concatenate([[0], np.cumsum(self._high)])
        picked = []
        for rank, bucket in self._targets:
            low = self._low[bucket]
            if low.sum() != self._high[bucket]:
                raise RuntimeError("refine() saw other values than count(): feed both passes the same chunks")
            inner = int(np.searchsorted(np.cumsum(low), rank - cum_high[bucket], side="right"))
            picked.append(_value((bucket << 16) | inner))
        a, b = picked
        return np.float32(_lerp(np.float32(a), np.float32(b), self._gamma))


def _fallback_ranks(n: int, q: float) -> tuple[int, int, float]:
    """The linear method's order statistics and weight in float64 (numpy's documented formula: virtual index
    (n - 1) q), for a numpy without the private helpers."""
    virtual = (n - 1) * q
    below = min(max(math.floor(virtual), 0), n - 1)
    return below, min(below + 1, n - 1), virtual - below


def _lerp(a: np.float32, b: np.float32, t) -> np.float32:
    """numpy's own ``_lerp`` where it has one, else its formula (exact at both ends)."""
    if _LINEAR is not None:
        return _np_lerp(a, b, t)
    diff = b - a
    return b - diff * (1 - t) if t >= 0.5 else a + diff * t


class StreamingHistogram:
    """``np.histogram(all values, bins)`` over a range known in advance (the values' min and max, from a previous
    pass): per-chunk counts with the same edges add up to the whole."""

    def __init__(self, bins: int, lo: np.float32, hi: np.float32):
        self.counts, self.edges = np.histogram(np.array([], dtype=np.float32), bins=bins, range=(lo, hi))

        self.bins, self.range = bins, (lo, hi)

    def add(self, values: np.ndarray) -> None:
        self.counts += np.histogram(values, bins=self.bins, range=self.range)[0]
