"""The heatmap colour scale, shared by rendered overlays and the web viewer.

TensorFlow-free (matplotlib's colour maps and NumPy only), so the web process can
colour a stored heatmap and draw the matching legend without loading a model.
"""

from __future__ import annotations

import io

import numpy as np
from matplotlib import colormaps
from PIL import Image

HEATMAP_CMAP = "jet"


def heatmap_rgba(heatmap: np.ndarray, *, cmap: str = HEATMAP_CMAP) -> np.ndarray:
    """uint8 RGBA array of a map in [0, 1] (values outside are clipped, NaN counts as 0)."""
    values = np.nan_to_num(np.asarray(heatmap, dtype=np.float32), nan=0.0)
    if values.ndim == 3 and values.shape[-1] == 1:
        values = values[..., 0]
    if values.ndim != 2:
        raise ValueError(f"A heatmap is a 2-D array; got shape {values.shape}.")
    return colormaps[cmap](np.clip(values, 0.0, 1.0), bytes=True)


def heatmap_png(heatmap: np.ndarray, *, cmap: str = HEATMAP_CMAP) -> bytes:
    """PNG of the coloured map alone (opaque), to lay over the image at any opacity."""
    buffer = io.BytesIO()
    Image.fromarray(heatmap_rgba(heatmap, cmap=cmap), mode="RGBA").save(buffer, format="PNG")
    return buffer.getvalue()


def css_gradient(*, cmap: str = HEATMAP_CMAP, stops: int = 11, direction: str = "to right") -> str:
    """A CSS ``linear-gradient`` with the same colours, for the viewer's legend."""
    colour_map = colormaps[cmap]
    parts = []
    for i in range(stops):
        position = i / (stops - 1)
        r, g, b, _ = (round(255 * c) for c in colour_map(position))
        parts.append(f"rgb({r} {g} {b}) {position * 100:.0f}%")
    return f"linear-gradient({direction}, {', '.join(parts)})"
