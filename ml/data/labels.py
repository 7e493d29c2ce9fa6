"""The three output classes of every model this platform serves."""

from __future__ import annotations

# Order matters: it is the order of the model's output units.
CLASSES: tuple[str, ...] = ("covid19", "pneumonia", "normal")
CLASS_DISPLAY = {"covid19": "COVID-19", "pneumonia": "Other pneumonia", "normal": "Normal"}
# (value, display name) pairs, the shape form and model fields take as choices.
CLASS_CHOICES = [(name, CLASS_DISPLAY[name]) for name in CLASSES]
