"""Readers for tests and drills, through odc-stac's reader-driver seam (`TaskEnvironment.reader`).

    TaskEnvironment(reader=FailingReader())   # every read fails as a vanished file would
    TaskEnvironment(reader=SlowReader(0.05))  # every read waits first, as a slow object store

Both wrap odc-stac's own rasterio driver, so everything else (GDAL settings, windows, nodata,
odc-stac's skipping and logging of failed reads) is what a real run does.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

from odc.loader._rio import RioDriver, RioReader


class FailingReader(RioDriver):
    """Every asset reads from a path that does not exist: rasterio fails, odc-stac skips the read
    and logs it (fail_on_error=False), and the pipeline reports it."""

    def open(self, src: Any, ctx: Any) -> RioReader:
        return RioReader(dataclasses.replace(src, uri=f"{src.uri}.vanished"), ctx)


class SlowReader(RioDriver):
    """Every read waits `delay_s` before reading, as from a slow object store."""

    def __init__(self, delay_s: float) -> None:
        super().__init__()
        self.delay_s = delay_s

    def open(self, src: Any, ctx: Any) -> RioReader:
        return _SlowRioReader(src, ctx, self.delay_s)


class _SlowRioReader(RioReader):
    def __init__(self, src: Any, ctx: Any, delay_s: float) -> None:
        super().__init__(src, ctx)
        self.delay_s = delay_s

    def read(self, *args: Any, **kwargs: Any) -> Any:
        time.sleep(self.delay_s)
        return super().read(*args, **kwargs)
