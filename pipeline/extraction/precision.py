"""Storing features in their storage dtype, refusing those it cannot represent (float16 under- and overflow)."""

from __future__ import annotations

import math

import numpy as np

# Share of non-zero float32 values allowed to round to zero when stored as float16;
# past it the stored features no longer say what the network computed.
MAX_UNDERFLOW = 0.01


# Unsigned integers as wide as each float: a float is zero exactly when its bits but the sign are.
_BITS = {2: np.uint16, 4: np.uint32, 8: np.uint64}


def _count_nonzero(values: np.ndarray) -> int:
    """Non-zero floats in ``values`` (±0 are zero, NaN is not), counted on their bits."""
    values = np.ascontiguousarray(values)
    if values.dtype.kind != "f" or values.dtype.itemsize not in _BITS:
        return int(np.count_nonzero(values))
    bits = _BITS[values.dtype.itemsize]
    magnitude = ~bits(1 << (8 * values.dtype.itemsize - 1))
    return int(np.count_nonzero(values.view(bits) & magnitude))


class PrecisionGuard:
    """Count precision losses batch by batch and stop at the first sign that storage lies.

    Random-init deep networks can produce activations around 1e-15, which
    float16 stores as exact zeros: a head would then score chance level on a
    store that looks fine. Counting the losses per batch stops that at once.
    """

    def __init__(self, feature_set: str, dtype: str):
        self.feature_set, self.dtype = feature_set, dtype
        self.lost = self.nonzero = 0

    def store(self, features: np.ndarray) -> np.ndarray:
        """``features`` (float32, from any runtime) in the storage dtype, checked.

        A value is lost when it is non-zero and stored as zero, so ``lost`` is
        the stored zeros less the computed ones; nothing overflows when the
        largest and smallest computed values lie within the storage dtype's
        range (NaN computed is not overflow: finalising refuses non-finite
        features). The extract stage does this for every batch on the thread
        that feeds the runtime, so it is counted cheaply: zeros on the integer
        view of the bits without the sign (numpy's float ``count_nonzero`` is
        ~5× slower, and ±0 both count as zero), extremes on the float32
        values (numpy reduces float16 without SIMD, ~40× slower); the exact
        overflow count is taken only when an extreme is out of range.
        """
        with np.errstate(over="ignore"):  # counted and reported below, with the fix
            stored = features.astype(self.dtype, copy=False)
        size = features.size
        if not size:
            return stored
        computed_zeros = size - _count_nonzero(features)
        high, low = float(features.max()), float(features.min())
        overflow, largest = 0, max(abs(high), abs(low))
        if not math.isfinite(largest) or (stored.dtype.kind == "f" and largest > float(np.finfo(stored.dtype).max)):
            # beyond the storage dtype's range (some values may still round down to its largest), or a NaN computed
            overflow = int(np.count_nonzero(np.isfinite(features) & ~np.isfinite(stored)))
            largest = float(np.nanmax(np.abs(features), initial=0.0))
        self.check(
            lost=int(size - _count_nonzero(stored) - computed_zeros),
            nonzero=int(size - computed_zeros),
            overflow=overflow,
            largest=largest,
        )
        return stored

    def check(self, lost: int, nonzero: int, overflow: int, largest: float) -> None:
        """Add one batch's counts; raise ``ValueError`` on any overflow or too much underflow."""
        self.lost += lost
        self.nonzero += nonzero
        if overflow:
            raise ValueError(
                f"features of {self.feature_set} overflow {self.dtype} ({overflow} values beyond its "
                f"range; largest |value| {largest:.3g}); set `dtype: float32` on the feature set "
                "or extract.dtype: float32"
            )
        if self.nonzero and self.lost > MAX_UNDERFLOW * self.nonzero:
            raise ValueError(
                f"features of {self.feature_set} underflow {self.dtype}: {self.lost / self.nonzero:.0%} "
                f"of the non-zero values round to 0 (largest |value| {largest:.3g}); set "
                "`dtype: float32` on the feature set or extract.dtype: float32"
            )
