"""CT lesion segmentation: lungs, infection, ground-glass vs consolidation on axial slices.

Importing the package loads nothing heavy: ``ml.ct.preprocess`` is NumPy/Pillow/OpenCV
only; ``ml.ct.segmenter``, ``ml.ct.model`` and ``ml.ct.training`` import TensorFlow.
"""
