"""Peak memory and time of one run in this process, for a bbox of a given half-width (degrees).

    python benchmarks/task_memory.py 0.05

Runs the pipeline in-process (no cluster) on the synthetic test bed, model `tiny`, year 2022, and
prints the pixels computed, the wall time, the first task's time per stage and the peak RSS.
"""

from __future__ import annotations

import resource
import sys
import tempfile
import time
import warnings
from pathlib import Path

from aef_pipeline.grid import BBox
from aef_pipeline.plan import Period
from aef_pipeline.run import RunRequest, run
from aef_pipeline.search import CatalogConfig
from aef_pipeline.testing import DEFAULT_SITE, build_catalog, write_static_catalog


def main() -> None:
    half = float(sys.argv[1]) if len(sys.argv) > 1 else 0.05
    warnings.simplefilter("ignore")
    workdir = Path(tempfile.mkdtemp(prefix="aef-bench-"))
    catalog = CatalogConfig(str(write_static_catalog(build_catalog(workdir / "es", "earth-search"))))
    lon, lat = DEFAULT_SITE.lon, DEFAULT_SITE.lat
    bbox = BBox(lon - half, lat - half * 0.7, lon + half, lat + half * 0.7)
    start = time.perf_counter()
    report = run(RunRequest(bbox, (Period.year(2022),), workdir / "field.zarr", catalog, device="cpu"))
    seconds = time.perf_counter() - start
    pixels = sum(task.pixels for task in report.tasks)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    print(
        f"half-width {half} deg: {pixels:,} px in {len(report.tasks)} tasks, {seconds:.1f} s, "
        f"first task {report.tasks[0].seconds}, peak RSS {peak:.2f} GB"
    )


if __name__ == "__main__":
    main()
