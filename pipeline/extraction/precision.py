"""Storing features in their storage dtype, refusing those it cannot represent (float16 under- and overflow)."""

from __future__ import annotations

import math

import numpy as np

# Share of non-zero float32 values allowed to round to zero when stored as float16;
# past it the stored features no longer say what the network computed.
MAX_UNDERFLOW = 0.01


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

        Counted without boolean temporaries, in five passes (the extract stage
        does this for every batch on its main thread): a value is lost when it
        is non-zero and stored as zero, so ``lost`` is the stored zeros less the
        computed ones; and nothing overflows when the largest and smallest
        stored values are finite (NaN computed is not overflow: finalising
        refuses non-finite features).
        """
        with np.errstate(over="ignore"):   # counted and reported below, with the fix
            stored = features.astype(self.dtype, copy=False)
        size = features.size
        if not size:
            return stored
        computed_zeros = size - np.count_nonzero(features)
        high, low = float(stored.max()), float(stored.min())
        overflow, largest = 0, max(abs(high), abs(low))
        if not math.isfinite(largest):   # a value beyond the storage dtype's range, or a NaN computed
            overflow = int(np.count_nonzero(np.isfinite(features) & ~np.isfinite(stored)))
            largest = float(np.nanmax(np.abs(features), initial=0.0))
        self.check(lost=int(size - np.count_nonzero(stored) - computed_zeros), nonzero=int(size - computed_zeros),
                   overflow=overflow, largest=largest)
        return stored

    def check(self, lost: int, nonzero: int, overflow: int, largest: float) -> None:
        """Add one batch's counts; raise ``ValueError`` on any overflow or too much underflow."""
        self.lost += lost
        self.nonzero += nonzero
        if overflow:
            raise ValueError(f"features of {self.feature_set} overflow {self.dtype} ({overflow} values beyond its "
                             f"range; largest |value| {largest:.3g}); set `dtype: float32` on the feature set "
                             "or extract.dtype: float32")
        if self.nonzero and self.lost > MAX_UNDERFLOW * self.nonzero:
            raise ValueError(f"features of {self.feature_set} underflow {self.dtype}: {self.lost / self.nonzero:.0%} "
                             f"of the non-zero values round to 0 (largest |value| {largest:.3g}); set "
                             "`dtype: float32` on the feature set or extract.dtype: float32")
