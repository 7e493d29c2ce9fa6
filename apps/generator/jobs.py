"""Run one sample-grid job (worker code: imports TensorFlow lazily, through ml.generate)."""

from __future__ import annotations

import hashlib
import json
import logging
import time
from io import BytesIO

from PIL import Image

from apps.generator.models import SampleGrid
from cxrplatform.jobs import JobResult, JobRunner

log = logging.getLogger(__name__)


class SampleGridRunner(JobRunner[SampleGrid]):
    """Sample, mark and store one grid (the PNG carries its provenance in a text chunk)."""

    what = "The sample grid"
    related = ("version",)

    def compute(self, grid: SampleGrid) -> JobResult:
        from apps.models.serving import generator_for
        from ml.generate.watermark import METADATA_KEY, grid_png

        start = time.perf_counter()
        version = grid.version
        generator = generator_for(version)  # the worker's one model cache
        images = generator.sample(grid.label, grid.n, seed=grid.seed)
        png = grid_png(
            images,
            label=grid.label,
            model=str(version),
            seed=grid.seed,
            extra={"grid": grid.pk, "version": version.pk},
        )
        metadata = json.loads(Image.open(BytesIO(png)).info[METADATA_KEY])
        return JobResult(
            fields={
                "sha256": hashlib.sha256(png).hexdigest(),
                "metadata": metadata,
                "seconds": time.perf_counter() - start,
            },
            files={"image": ("grid.png", png)},
        )
