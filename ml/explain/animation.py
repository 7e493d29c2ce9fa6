"""How the model's attention develops during training: Grad-CAM per epoch, as a GIF.

Why: a final Grad-CAM shows where a trained model looks; the same map after every
epoch shows whether it *learned* to look at the lungs or drifted to a corner label,
the letterbox edge or a hospital marker (shortcut learning), which a single picture
cannot show. A reviewer sees it at a glance on the model card.

What it must not do is change the training result. The maps are computed with
:func:`ml.explain.explain` (the platform's Grad-CAM, last conv layer) in inference
mode: no training-mode layers run, no random numbers are drawn (no NumPy, Python or
TensorFlow generator is touched), no weight or optimizer state is written, and the
images are a fixed choice from the validation split, made without a generator.
``tests/ml/test_train_animation.py`` checks that the weights are bit-identical with
the animation on and off.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import keras
import numpy as np
from matplotlib import colormaps
from PIL import Image, ImageDraw, ImageFont

from ml.explain._common import clear_cache, forward
from ml.explain.methods import explain

log = logging.getLogger(__name__)

# The colour map of rendered overlays (ml/explain/render.py) and the same opacity.
HEATMAP_CMAP = "jet"
OVERLAY_ALPHA = 0.45
TILE = 128
FRAME_MS = 400
MAX_IMAGES = 3
_CAPTION_HEIGHT = 20
_LABEL_HEIGHT = 16
_GAP = 4
_BACKGROUND = (255, 255, 255)
_TEXT = (0, 0, 0)
# One fixed palette for every frame: 12 grey levels x 12 heat levels of the blend, plus
# 16 plain greys for the text. Median-cut palettes drop the rare hot colours (the peak
# of the map turns black); a fixed one keeps them, and because unchanged pixels then
# keep their index from frame to frame, the GIF encoder can skip them.
_GREY_LEVELS = 12
_HEAT_LEVELS = 12
_TEXT_LEVELS = 16


def pick_images(
    labels: Sequence[int],
    n_classes: int,
    max_images: int = MAX_IMAGES,
    *,
    sources: Sequence[str] | None = None,
) -> list[int]:
    """Indices of up to ``max_images`` images: one of each class first, then the next ones.

    With ``sources``, each class's image comes from a source not shown yet where
    possible (the data sets differ in age and origin; three images from one source
    would show one hospital's pictures only). Deterministic, no random generator:
    the same split always gives the same images.
    """
    labels = [int(v) for v in labels]
    origin = [str(s) for s in sources] if sources is not None else [""] * len(labels)
    if len(origin) != len(labels):
        raise ValueError("need one source per label")
    chosen: list[int] = []
    for c in range(n_classes):
        if len(chosen) == max_images:
            break
        of_class = [i for i, label in enumerate(labels) if label == c]
        if not of_class:
            continue
        used = {origin[i] for i in chosen}
        chosen.append(next((i for i in of_class if origin[i] not in used), of_class[0]))
    for i in range(len(labels)):
        if len(chosen) >= max_images:
            break
        if i not in chosen:
            chosen.append(i)
    return sorted(chosen)


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # pragma: no cover - Pillow < 10.1: the bitmap font has one size
        return ImageFont.load_default()


def overlay_tile(image: np.ndarray, heatmap: np.ndarray, *, tile: int = TILE) -> Image.Image:
    """RGB picture of a [0, 1] image with a [0, 1] map blended over it in 'jet'."""
    gray = np.clip(np.asarray(image, dtype=np.float32).reshape(image.shape[:2]), 0.0, 1.0)
    colour = colormaps[HEATMAP_CMAP](np.clip(heatmap, 0.0, 1.0))[..., :3]
    blended = (1.0 - OVERLAY_ALPHA) * gray[..., np.newaxis] + OVERLAY_ALPHA * colour
    picture = Image.fromarray(np.round(blended * 255).astype(np.uint8), mode="RGB")
    if picture.size != (tile, tile):
        picture = picture.resize((tile, tile), Image.Resampling.BILINEAR)
    return picture


def compose_frame(
    tiles: Sequence[Image.Image], captions: Sequence[str], epoch: int, *, tile: int = TILE
) -> Image.Image:
    """The tiles side by side, 'epoch N' above them and one caption under each."""
    width = len(tiles) * tile + (len(tiles) - 1) * _GAP
    frame = Image.new("RGB", (width, _CAPTION_HEIGHT + tile + _LABEL_HEIGHT), _BACKGROUND)
    draw = ImageDraw.Draw(frame)
    draw.text(
        (width // 2, _CAPTION_HEIGHT // 2),
        f"epoch {epoch}",
        fill=_TEXT,
        font=_font(14),
        anchor="mm",
    )
    small = _font(11)
    for i, (picture, caption) in enumerate(zip(tiles, captions, strict=True)):
        left = i * (tile + _GAP)
        frame.paste(picture, (left, _CAPTION_HEIGHT))
        draw.text(
            (left + tile // 2, _CAPTION_HEIGHT + tile + _LABEL_HEIGHT // 2),
            caption,
            fill=_TEXT,
            font=small,
            anchor="mm",
        )
    return frame


@functools.cache
def _palette() -> Image.Image:
    grey = np.linspace(0.0, 1.0, _GREY_LEVELS)[:, np.newaxis, np.newaxis]
    heat = colormaps[HEATMAP_CMAP](np.linspace(0.0, 1.0, _HEAT_LEVELS))[np.newaxis, :, :3]
    blends = ((1.0 - OVERLAY_ALPHA) * grey + OVERLAY_ALPHA * heat).reshape(-1, 3)
    text = np.repeat(np.linspace(0.0, 1.0, _TEXT_LEVELS)[:, np.newaxis], 3, axis=1)
    colours = np.round(np.concatenate([blends, text]) * 255).astype(np.uint8)
    palette = Image.new("P", (1, 1))
    # Fewer than 256 entries: the encoder needs a free index for unchanged pixels.
    palette.putpalette(colours.ravel().tolist())
    return palette


def write_gif(frames: Sequence[Image.Image], path: Path, *, duration_ms: int = FRAME_MS) -> Path:
    """An animated GIF that loops forever, ``duration_ms`` per frame."""
    if not frames:
        raise ValueError("no frames to write")
    paletted = [frame.quantize(palette=_palette(), dither=Image.Dither.NONE) for frame in frames]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    paletted[0].save(
        path,
        format="GIF",
        save_all=True,
        append_images=paletted[1:],
        duration=duration_ms,
        loop=0,
        optimize=True,  # pixels unchanged since the previous frame become transparent
        disposal=1,
    )
    return path


class GradCAMAnimation(keras.callbacks.Callback):  # type: ignore[misc]  # Keras ships no types
    """After every epoch, Grad-CAM of a few fixed images; at the end, ``path`` as a GIF.

    ``images`` (N, H, W, 1) in [0, 1] and their true ``labels`` (class indices). Each
    map explains the image's *true* class, so the target does not jump between epochs
    as the prediction changes; the caption gives the model's probability for it.
    Frames are kept in memory (a few tens of KB each) and written once, when
    training ends, so a run stopped early still gets one frame per epoch run.
    """

    def __init__(
        self,
        images: np.ndarray,
        labels: Sequence[int],
        classes: Sequence[str],
        path: Path,
        *,
        tile: int = TILE,
        duration_ms: int = FRAME_MS,
    ) -> None:
        super().__init__()
        self.images = np.asarray(images, dtype=np.float32)
        self.labels = [int(v) for v in labels]
        if len(self.images) != len(self.labels) or not len(self.labels):
            raise ValueError("need one label per image and at least one image")
        self.classes = list(classes)
        self.path = Path(path)
        self.tile = tile
        self.duration_ms = duration_ms
        self.frames: list[Image.Image] = []
        self.written = False

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        self.frames = []
        self.written = False

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        probs = forward(self.model, self.images)
        tiles, captions = [], []
        for image, label, row in zip(self.images, self.labels, probs, strict=True):
            heatmap = explain(
                self.model, image, "gradcam", target_class=label, classes=self.classes
            )
            tiles.append(overlay_tile(image, heatmap.values, tile=self.tile))
            captions.append(f"{self.classes[label]}  p={row[label]:.2f}")
        self.frames.append(compose_frame(tiles, captions, epoch + 1, tile=self.tile))

    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        # The compiled Grad-CAM functions hold graph state for this model; drop them.
        clear_cache(self.model)
        if self.frames:
            write_gif(self.frames, self.path, duration_ms=self.duration_ms)
            self.written = True
            log.info("wrote %s (%d frames)", self.path, len(self.frames))
