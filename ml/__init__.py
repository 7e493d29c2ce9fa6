"""Framework code for the CXR platform: data, preprocessing, models, inference.

Nothing in ``ml`` imports Django (a ruff rule enforces it), so data scientists
can use it from a notebook or the ``python -m ml`` CLI without the web app.
Importing ``ml`` itself is cheap; TensorFlow loads only in the modules that
need it (``ml.classifier``, ``ml.model``).
"""
