"""Framework code for the CXR platform: data, preprocessing, models, inference.

Nothing in ``ml`` imports Django (a ruff rule enforces it), so data scientists
can use it from a notebook or the ``python -m ml`` CLI without the web app.
Importing ``ml`` itself is cheap; TensorFlow loads only in the modules that
need it (``ml.serving.classifier``, ``ml.models.architectures``).
"""

import os as _os

# TensorFlow's C++ start-up chatter (CUDA probes on a CPU machine, oneDNN
# notices) buries worker logs; keep warnings and errors.
_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
