"""Overlay pictures and storage of heatmaps.

The raw map is what gets stored (``.npy``, float32, the input's resolution): overlays
can be redrawn from it with another colour map or opacity, and the faithfulness scores
are computed on it. The overlay always carries a colour scale: a heatmap without one
invites reading its colours as absolute evidence, while every map here is min-max scaled
per image (0 = least, 1 = most important *for this image*).
"""

from __future__ import annotations

import io

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ml.explain._common import normalise_map, resize_map
from ml.serving.colours import HEATMAP_CMAP


def display_image(image: np.ndarray) -> tuple[np.ndarray, str | None]:
    array = np.asarray(image, dtype=np.float32)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim == 2:
        return np.clip(array, 0.0, 1.0), "gray"
    if array.ndim == 3 and array.shape[-1] == 3:
        return np.clip(array, 0.0, 1.0), None
    raise ValueError(f"Cannot display an image of shape {array.shape}.")


def render_overlay(
    image: np.ndarray,
    heatmap: np.ndarray,
    *,
    alpha: float = 0.45,
    cmap: str = HEATMAP_CMAP,
    title: str | None = None,
    not_seen: np.ndarray | None = None,
) -> bytes:
    """PNG of the image with the heatmap over it and a colour bar labelled 0..1.

    Uses matplotlib's object API with the Agg canvas (no pyplot global state), so it is
    safe in worker threads and needs no display. A heatmap of another size is resized
    to the image; one outside [0, 1] is min-max scaled first. ``not_seen`` (bool, any
    size, resized to the image): pixels the model was never shown (blanked outside the
    lungs); they get no heat, a grey hatch, and a legend "not seen by the model".
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError("alpha must be in [0, 1]")
    picture, gray = display_image(image)
    height, width = picture.shape[:2]
    values = resize_map(np.asarray(heatmap, dtype=np.float32), (height, width))
    if not np.all(np.isfinite(values)) or values.min() < 0.0 or values.max() > 1.0:
        values = normalise_map(values)

    dpi = 100
    side = max(3.2, max(height, width) / dpi)  # never below the image's own size
    figure = Figure(figsize=(side * 1.3, side + (0.45 if title else 0.15)), dpi=dpi)
    FigureCanvasAgg(figure)
    axes = figure.add_axes((0.02, 0.03, 0.74, 0.88 if title else 0.94))
    axes.imshow(picture, cmap=gray, vmin=0.0, vmax=1.0, interpolation="nearest")
    hidden = None
    if not_seen is not None:
        hidden = resize_map(np.asarray(not_seen, dtype=np.float32), (height, width)) > 0.5
        values = np.ma.masked_array(values, mask=hidden)
    overlay = axes.imshow(values, cmap=cmap, alpha=alpha, vmin=0.0, vmax=1.0)
    if hidden is not None and hidden.any():
        from matplotlib.patches import Patch

        shade = np.zeros((height, width, 4), dtype=np.float32)
        shade[hidden] = (0.5, 0.5, 0.5, 0.55)
        axes.imshow(shade, interpolation="nearest")
        axes.contourf(hidden.astype(np.float32), levels=[0.5, 1.5], colors="none", hatches=["//"])
        legend = Patch(facecolor=(0.5, 0.5, 0.5, 0.55), hatch="//", label="not seen by the model")
        axes.legend(handles=[legend], loc="lower left", fontsize=7, framealpha=0.8)
    axes.set_axis_off()
    if title:
        axes.set_title(title, fontsize=9)
    bar_axes = figure.add_axes((0.80, 0.08, 0.04, 0.78 if title else 0.84))
    bar = figure.colorbar(overlay, cax=bar_axes, ticks=np.linspace(0.0, 1.0, 6))
    if bar.solids is not None:  # set once the colorbar has drawn its colours
        bar.solids.set_alpha(1.0)
    bar.set_label("relative importance (0 = least, 1 = most)", fontsize=8)
    bar.ax.tick_params(labelsize=8)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


def heatmap_to_npy(heatmap: np.ndarray) -> bytes:
    """``np.save`` bytes of the map as float32 (no pickle: safe to load from storage)."""
    buffer = io.BytesIO()
    np.save(buffer, np.asarray(heatmap, dtype=np.float32), allow_pickle=False)
    return buffer.getvalue()


def heatmap_from_npy(data: bytes) -> np.ndarray:
    """The map stored by :func:`heatmap_to_npy`."""
    values: np.ndarray = np.load(io.BytesIO(data), allow_pickle=False)
    return values
