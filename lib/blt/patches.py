"""The patching rules of the Byte Latent Transformer (Pagnoni et al. 2024): where a new patch starts, given a
file's next-byte entropies H_0 .. H_{n-1} in bits, and the statistics of the patch lengths. Pure numpy;
docs/ARCHITECTURE.md, "The byte-level model".

  threshold: a new patch starts at byte i when H_i > threshold            (patch_starts_threshold)
  rise:      a new patch starts at byte i >= 1 when H_i - H_{i-1} > threshold  (patch_starts_rise)
Byte 0 of every file always starts a patch; patches never span two files.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

RULES = ("threshold", "rise")
QUANTILES = (0.1, 0.25, 0.5, 0.75, 0.9, 0.99)


def _entropy_array(entropy: Sequence[float] | np.ndarray) -> np.ndarray:
    values = np.asarray(entropy, dtype=np.float64)
    if values.ndim != 1:
        raise ValueError(f"entropy must be one-dimensional, got shape {values.shape}")
    if not np.isfinite(values).all():
        raise ValueError("entropy holds NaN or infinite values")
    return values


def patch_starts_threshold(entropy: Sequence[float] | np.ndarray, threshold: float) -> np.ndarray:
    """Indices where a patch starts: 0, and every i with entropy[i] > threshold (sorted, int64)."""
    values = _entropy_array(entropy)
    if values.size == 0:
        return np.zeros(0, dtype=np.int64)
    fires = values > threshold
    fires[0] = True
    return np.flatnonzero(fires).astype(np.int64)


def patch_starts_rise(entropy: Sequence[float] | np.ndarray, threshold: float) -> np.ndarray:
    """Indices where a patch starts: 0, and every i >= 1 with entropy[i] - entropy[i-1] > threshold."""
    values = _entropy_array(entropy)
    if values.size == 0:
        return np.zeros(0, dtype=np.int64)
    fires = np.zeros(values.size, dtype=bool)
    fires[0] = True
    fires[1:] = np.diff(values) > threshold
    return np.flatnonzero(fires).astype(np.int64)


PATCH_RULES = {"threshold": patch_starts_threshold, "rise": patch_starts_rise}


def patch_lengths(starts: np.ndarray, n: int) -> np.ndarray:
    """Lengths of the patches that begin at `starts` in a sequence of n bytes (they sum to n)."""
    return np.diff(np.append(np.asarray(starts, dtype=np.int64), n))


def patch_statistics(lengths: np.ndarray, n_bytes: int) -> dict:
    """Mean and distribution of patch length (bytes), and patches per KB (1,024 bytes)."""
    lengths = np.asarray(lengths)
    if lengths.size == 0:
        return {"patches": 0, "patches_per_kb": 0.0}
    return {
        "patches": int(lengths.size),
        "patches_per_kb": float(lengths.size * 1024 / n_bytes),
        "mean_length": float(lengths.mean()),
        "max_length": int(lengths.max()),
        "length_quantiles": {f"p{round(q * 100)}": float(np.quantile(lengths, q)) for q in QUANTILES},
    }
