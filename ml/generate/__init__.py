"""A class-conditional GAN of lung-framed chest X-rays, and its measurement.

The question it answers: can a generator trained on the classifier's own training split
produce images that (a) look like held-out real images to the classifier's features,
(b) are not copies of training patients, and (c) help the classifier when added to its
training data? ``python -m ml generate train|sample|evaluate``; the bundled generator and
its report are in ``ml/bundled/generator/``.

* :mod:`ml.generate.data` - the classifier's split and preprocessing, at the generator's
  resolution, cached;
* :mod:`ml.generate.model` - the networks (conditional DCGAN, spectral-norm projection
  discriminator, hinge loss, DiffAugment, EMA generator);
* :mod:`ml.generate.training` - the training loop (checkpointed, resumable), the
  fixed-noise GIF, the checkpoint chosen on the validation split, the card;
* :mod:`ml.generate.sampler` - loading the bundled generator and drawing samples;
* :mod:`ml.generate.watermark` - the "synthetic" mark in the pixels and the metadata and
  its detection (no TensorFlow: the web process imports it);
* :mod:`ml.generate.metrics` - Frechet distance, KID, precision/recall, memorisation
  (NumPy/SciPy only);
* :mod:`ml.generate.evaluation` - features, two-sample test, usefulness runs and the report.

Nothing here imports Django.
"""
