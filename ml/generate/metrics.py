"""Distribution and memorisation metrics on feature (or pixel) vectors. NumPy/SciPy only.

* :func:`frechet_distance` - the Frechet distance between Gaussians fitted to two sets
  (Heusel et al. 2017), the "FID" formula on whatever features are given;
* :func:`kid` - kernel inception distance (Binkowski et al. 2018): the unbiased MMD^2
  with the cubic polynomial kernel ``(x.y / d + 1)^3``;
* :func:`bootstrap_distance` - a metric with a percentile bootstrap interval,
  resampling both sets (for KID, pairs of the same resampled image are left out, so the
  unbiased estimator stays unbiased);
* :func:`precision_recall` - improved precision and recall (Kynkaanniemi et al. 2019):
  the share of one set inside the other's k-NN manifold (union of balls reaching each
  point's k-th nearest neighbour, k = 3), with a subsampling interval;
* :func:`nearest` - nearest neighbour of each query in a reference set (memorisation).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import linalg

INTERVAL = (2.5, 97.5)


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2))."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if len(a) < 2 or len(b) < 2:
        raise ValueError("the Frechet distance needs at least 2 vectors per set")
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    # Fewer vectors than dimensions make the product singular: handled below.
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", linalg.LinAlgWarning)
        covmean = linalg.sqrtm(cov_a @ cov_b)
    if not np.isfinite(covmean).all():  # singular product: regularise (as pytorch-fid does)
        eps = 1e-6 * np.eye(len(cov_a))
        covmean = linalg.sqrtm((cov_a + eps) @ (cov_b + eps))
    covmean = np.real(covmean)
    value = ((mu_a - mu_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * np.trace(covmean)
    return float(max(value, 0.0))


def _poly_kernel(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    k: np.ndarray = (a @ b.T / a.shape[1] + 1.0) ** 3
    return k


def kid(
    a: np.ndarray,
    b: np.ndarray,
    index_a: np.ndarray | None = None,
    index_b: np.ndarray | None = None,
) -> float:
    """Unbiased MMD^2 (cubic polynomial kernel). ``index_*``: which original vector each
    row is (bootstrap); pairs of rows that are the same vector are not counted."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    ia = np.arange(len(a)) if index_a is None else np.asarray(index_a)
    ib = np.arange(len(b)) if index_b is None else np.asarray(index_b)

    def within(x: np.ndarray, idx: np.ndarray) -> float:
        k = _poly_kernel(x, x)
        keep = idx[:, None] != idx[None, :]
        # Every pair the same image (a tiny resample): fall back to the biased mean.
        return float(k[keep].mean()) if keep.any() else float(k.mean())

    return within(a, ia) + within(b, ib) - 2.0 * float(_poly_kernel(a, b).mean())


@dataclass
class Estimate:
    value: float
    low: float
    high: float
    method: str

    def to_json(self) -> dict[str, Any]:
        return {
            "value": round(self.value, 6),
            "ci95": [round(self.low, 6), round(self.high, 6)],
            "method": self.method,
        }


def bootstrap_distance(
    metric: str, a: np.ndarray, b: np.ndarray, *, n_boot: int = 200, seed: int = 0
) -> Estimate:
    """``metric`` ("fd" or "kid") of the full sets, with a 95% percentile interval from
    resampling both sets with replacement ``n_boot`` times."""
    rng = np.random.default_rng(seed)
    if metric == "fd":
        value = frechet_distance(a, b)
    elif metric == "kid":
        value = kid(a, b)
    else:
        raise ValueError(f"unknown metric {metric!r}")
    draws = []
    for _ in range(n_boot):
        ia = rng.integers(0, len(a), len(a))
        ib = rng.integers(0, len(b), len(b))
        if metric == "fd":
            draws.append(frechet_distance(a[ia], b[ib]))
        else:
            draws.append(kid(a[ia], b[ib], ia, ib))
    low, high = np.percentile(draws, INTERVAL) if draws else (value, value)
    return Estimate(value, float(low), float(high), f"percentile bootstrap, {n_boot} resamples")


def pairwise_distances(a: np.ndarray, b: np.ndarray, chunk: int = 512) -> np.ndarray:
    """Euclidean distances (len(a), len(b)), in chunks of ``a``."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    bb = (b**2).sum(1)
    out = np.empty((len(a), len(b)))
    for i in range(0, len(a), chunk):
        part = a[i : i + chunk]
        d2 = (part**2).sum(1)[:, None] + bb[None, :] - 2.0 * part @ b.T
        out[i : i + chunk] = np.sqrt(np.maximum(d2, 0.0))
    return out


def knn_radii(x: np.ndarray, k: int = 3) -> np.ndarray:
    """Distance of each vector to its k-th nearest neighbour in the same set (not itself)."""
    if len(x) <= k:
        raise ValueError(f"k-NN radii need more than k={k} vectors, got {len(x)}")
    d = pairwise_distances(x, x)
    np.fill_diagonal(d, np.inf)
    return np.sort(d, axis=1)[:, k - 1]


def coverage(queries: np.ndarray, reference: np.ndarray, k: int = 3) -> float:
    """Share of ``queries`` inside the k-NN manifold of ``reference``."""
    radii = knn_radii(reference, k)
    d = pairwise_distances(queries, reference)
    return float((d <= radii[None, :]).any(axis=1).mean())


def precision_recall(
    real: np.ndarray,
    fake: np.ndarray,
    *,
    k: int = 3,
    repeats: int = 50,
    share: float = 0.8,
    seed: int = 0,
) -> dict[str, Estimate]:
    """Precision (fake inside the real manifold) and recall (real inside the fake one).

    Both sets are drawn to the same size (``share`` of the smaller set, without
    replacement: k-NN radii are meaningless with duplicates) ``repeats`` times; the value
    is the mean and the interval the 2.5-97.5 percentiles over draws."""
    rng = np.random.default_rng(seed)
    n = max(k + 1, int(share * min(len(real), len(fake))))
    if n > min(len(real), len(fake)):
        raise ValueError(f"precision/recall need more than {k} vectors per set")
    p, r = [], []
    for _ in range(repeats):
        rs = real[rng.choice(len(real), n, replace=False)]
        fs = fake[rng.choice(len(fake), n, replace=False)]
        p.append(coverage(fs, rs, k))
        r.append(coverage(rs, fs, k))
    method = f"mean over {repeats} draws of {n} per set (k={k}); 2.5-97.5 percentiles"
    lows, highs = (
        [np.percentile(v, INTERVAL[0]) for v in (p, r)],
        [np.percentile(v, INTERVAL[1]) for v in (p, r)],
    )
    return {
        name: Estimate(float(np.mean(v)), float(lows[i]), float(highs[i]), method)
        for i, (name, v) in enumerate((("precision", p), ("recall", r)))
    }


def nearest(queries: np.ndarray, reference: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(index, distance) of each query's nearest reference vector."""
    d = pairwise_distances(queries, reference)
    idx = d.argmin(axis=1)
    return idx, d[np.arange(len(queries)), idx]


def _shifted(x: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """Images (n, S, S) moved by (dy, dx) pixels, the uncovered border filled with 0."""
    out = np.zeros_like(x)
    size = x.shape[1]
    ys, yd = (
        (slice(0, size - dy), slice(dy, size))
        if dy >= 0
        else (slice(-dy, size), slice(0, size + dy))
    )
    xs, xd = (
        (slice(0, size - dx), slice(dx, size))
        if dx >= 0
        else (slice(-dx, size), slice(0, size + dx))
    )
    out[:, yd, xd] = x[:, ys, xs]
    return out


def nearest_shifted(
    queries: np.ndarray, reference: np.ndarray, max_shift: int = 2
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`nearest` in pixel space, allowing each query to move by up to ``max_shift``
    pixels in each direction (the smallest distance over the shifts): a copy moved by a
    pixel is still a copy, and a plain pixel distance would not see it.
    ``queries``/``reference``: images (n, S, S)."""
    ref = reference.reshape(len(reference), -1)
    best_d = np.full(len(queries), np.inf)
    best_i = np.zeros(len(queries), dtype=np.int64)
    for dy in range(-max_shift, max_shift + 1):
        for dx in range(-max_shift, max_shift + 1):
            moved = _shifted(queries, dy, dx).reshape(len(queries), -1)
            idx, d = nearest(moved, ref)
            better = d < best_d
            best_d[better], best_i[better] = d[better], idx[better]
    return best_i, best_d


def summary(values: np.ndarray) -> dict[str, float]:
    v = np.asarray(values, np.float64)
    return {
        "n": len(v),
        "min": float(v.min()),
        "p01": float(np.percentile(v, 1)),
        "p05": float(np.percentile(v, 5)),
        "median": float(np.median(v)),
        "mean": float(v.mean()),
    }


def wilson(successes: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score interval of a proportion."""
    if n == 0:
        return (0.0, 1.0)
    p = successes / n
    denom = 1 + z**2 / n
    centre = (p + z**2 / (2 * n)) / denom
    half = z * np.sqrt(p * (1 - p) / n + z**2 / (4 * n**2)) / denom
    return (float(centre - half), float(centre + half))


MetricFn = Callable[[np.ndarray, np.ndarray], float]
