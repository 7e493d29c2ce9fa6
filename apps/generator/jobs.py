"""Run one sample-grid job (worker code: imports TensorFlow lazily, through ml.generate)."""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import time
from io import BytesIO

from django.core.files.base import ContentFile
from PIL import Image

from apps.generator.models import SampleGrid
from cxrplatform.files import files_removed_on_error
from cxrplatform.jobs import claim_job, failure_recorded

log = logging.getLogger(__name__)


@functools.lru_cache(maxsize=2)
def _generator(path: str, sha256: str):
    from ml.generate.sampler import Generator

    return Generator.load(path, expected_sha256=sha256)


def run_sample_grid(*, grid_id: int) -> SampleGrid | None:
    """Sample, mark and store one grid. Idempotent (a finished grid is left alone)."""
    grid = claim_job(SampleGrid, grid_id, related=("version",))
    if grid is None or grid.is_finished:
        return grid
    with failure_recorded(grid, what="The sample grid"):
        from ml.generate.watermark import METADATA_KEY, grid_png

        start = time.perf_counter()
        version = grid.version
        generator = _generator(str(version.path), version.sha256)
        images = generator.sample(grid.label, grid.n, seed=grid.seed)
        png = grid_png(
            images,
            label=grid.label,
            model=str(version),
            seed=grid.seed,
            extra={"grid": grid.pk, "version": version.pk},
        )
        metadata = json.loads(Image.open(BytesIO(png)).info[METADATA_KEY])
        seconds = time.perf_counter() - start
        with files_removed_on_error() as stored:
            name = grid.image.storage.save(
                grid.image.field.generate_filename(grid, "grid.png"), ContentFile(png)
            )
            stored.add(name)
            grid.mark_done(
                image=name,
                sha256=hashlib.sha256(png).hexdigest(),
                metadata=metadata,
                seconds=seconds,
            )
    return grid
