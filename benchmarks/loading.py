"""Figures 2 and 3: our load stage against plain rasterio, and the pixels it reads per pixel written.

Loader efficiency: odc-stac loading every (product, band) of one task onto the task's grid, as the
pipeline does (dask threads, chunks of the encoder's read_rows), against a plain rasterio windowed read of
the same COG windows with the same number of threads; both read the same bytes, so the ratio of
their pixels/s is the ratio of their times. Best of `repeats` for each, alternating, page cache
warm for both. Ours ends with every chunk in memory (`persist`), as the plain read ends with one
array per window: the pipeline computes from the chunks and never joins the loaded bands into
whole arrays. The same load joined into one array per band (`compute`, a copy of everything
read) is given in the note.

Read amplification: the source pixels odc-stac asks GDAL for (counted where odc-stac computes each
read's source window) while the pipeline runs a task end to end (SCL for frame selection, then
the bands and SCL of the frames kept, in the encoder's row blocks), divided by what a perfect
reader needs: the task's pixels, at each band's own resolution, for each output frame and band.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any, cast

import dask
import numpy as np
import odc.loader._rio as odc_rio
import rasterio
from odc.geo.geobox import GeoBox
from odc.loader._rio import RioDriver
from rasterio.windows import Window, from_bounds

from aef_pipeline import cog_reader
from aef_pipeline import sentinel2 as s2
from aef_pipeline.encode import EncodeOptions
from aef_pipeline.environment import TaskEnvironment
from aef_pipeline.load import DEFAULT_CHUNK_FRAMES, GdalOptions, canonical_item, load_selection
from aef_pipeline.model import load_model
from aef_pipeline.plan import TileTask
from aef_pipeline.preprocess import preprocess
from aef_pipeline.providers import SCL
from aef_pipeline.run import RunRequest, TaskContext, layout, process_task
from aef_pipeline.search import SceneSelection
from aef_pipeline.store import create_store
from benchmarks.report import Figure

READ_ROWS = EncodeOptions().read_rows
READ_THREADS = TaskEnvironment().read_threads  # the pipeline's read settings
# The loader before issue 20's changes, for the before/after ratio in one run: odc-stac's own
# reader (one open per chunk) and chunks of one frame.
ODC_READER_ONE_FRAME: dict[str, Any] = {"reader": RioDriver(), "chunk_frames": 1}


def loader_efficiency(
    selection: SceneSelection,
    load_box: GeoBox,
    bands: tuple[str, ...],
    repeats: int = 2,
    chunk_rows: int | None = READ_ROWS,
) -> Figure:
    jobs = _reference_jobs(selection, load_box, bands)
    pixels = sum(window.width * window.height for _, window in jobs)
    _read_plain(jobs)  # warm the page cache
    ours, joined, before, plain = [], [], [], []
    for _ in range(repeats):
        ours.append(_timed(lambda: _load_ours(selection, load_box, bands, chunk_rows)))
        joined.append(_timed(lambda: _load_ours(selection, load_box, bands, chunk_rows, join=True)))
        before.append(_timed(lambda: _load_ours(selection, load_box, bands, chunk_rows, **ODC_READER_ONE_FRAME)))
        plain.append(_timed(lambda: _read_plain(jobs)))
    t_ours, t_joined, t_before, t_plain = min(ours), min(joined), min(before), min(plain)
    # The same for the 10 m bands alone (no resampling in either): what the 20 m bands' bilinear
    # upsampling (GDAL warp inside odc-stac) costs is the difference.
    ten_m = tuple(b for b in bands if s2.BAND_BY_NAME[b].resolution == 10)
    ten_jobs = _reference_jobs(selection, load_box, ten_m)  # with SCL, read on its own grid by both
    t_ours_10 = min(_timed(lambda: _load_ours(selection, load_box, ten_m, chunk_rows)) for _ in range(repeats))
    t_plain_10 = min(_timed(lambda: _read_plain(ten_jobs)) for _ in range(repeats))
    return Figure(
        2,
        "loader efficiency (our px/s / plain rasterio px/s)",
        t_plain / t_ours,
        "",
        ">= 0.7",
        sizes=f"{len(selection.items)} products x {len(bands) + 1} assets onto {load_box.shape[0]}x"
        f"{load_box.shape[1]} px, {READ_THREADS} threads, chunks of {chunk_rows} rows x {DEFAULT_CHUNK_FRAMES} frames",
        note=f"10 m bands + SCL alone: {t_plain_10 / t_ours_10:.2f}; joined into whole arrays: "
        f"{t_plain / t_joined:.2f}; odc-stac's reader, one frame per chunk: {t_plain / t_before:.2f}",
        details={
            "pixels_read": pixels,
            "seconds_ours": t_ours,
            "seconds_plain": t_plain,
            "seconds_ours_joined": t_joined,
            "seconds_odc_reader_one_frame": t_before,
            "px_per_s_ours": pixels / t_ours,
            "px_per_s_plain": pixels / t_plain,
            "chunk_rows": chunk_rows,
            "ratio_10m_bands_and_scl": t_plain_10 / t_ours_10,
        },
    )


def read_amplification(task: TileTask, request: RunRequest, selection: SceneSelection, halo: int) -> Figure:
    model = load_model(request.model)
    bands, area = model.spec.bands, task.geobox()
    create_store(request.output, [task.tile], request.periods, layout(request, model.spec), overwrite=True)
    with _counting_source_pixels() as counted:
        process_task(task, request, TaskContext(model))
    with dask.config.set(scheduler="threads", num_workers=READ_THREADS):  # the frame count, read apart
        loaded = load_selection(selection, area.pad(halo), bands, GdalOptions(), chunk_rows=READ_ROWS)
        frames = preprocess(loaded, selection.scenes, bands, core=area).sizes["time"]
    needed = frames * sum(area.shape[0] * area.shape[1] * (10 / s2.BAND_BY_NAME[b].resolution) ** 2 for b in bands)
    return Figure(
        3,
        "read amplification (px read / px written x frames x bands)",
        counted[0] / needed,
        "",
        "<= 1.15",
        sizes=f"task {area.shape[0]}x{area.shape[1]} px + halo {halo}, {len(selection.items)} products -> "
        f"{frames} frames x {len(bands)} bands",
        details={"source_pixels_read": counted[0], "source_pixels_needed": needed, "frames": frames},
    )


def _reference_jobs(selection: SceneSelection, box: GeoBox, bands: tuple[str, ...]) -> list[tuple[str, Window]]:
    """(href, source window) of every asset our loader reads: the window covering the load box."""
    jobs = []
    for item, info in zip(selection.items, selection.scenes, strict=True):
        canonical = canonical_item(item, dict(info.asset_keys))
        for name in (*bands, SCL):
            href = canonical.assets[name].href
            with rasterio.open(href) as src:
                exact = from_bounds(*box.boundingbox, transform=src.transform)
                col0, row0 = math.floor(exact.col_off), math.floor(exact.row_off)
                col1, row1 = math.ceil(exact.col_off + exact.width), math.ceil(exact.row_off + exact.height)
                window = Window(col0, row0, col1 - col0, row1 - row0).intersection(Window(0, 0, src.width, src.height))
            jobs.append((href, window))
    return jobs


def _read_plain(jobs: list[tuple[str, Window]]) -> list[np.ndarray]:
    def read(job: tuple[str, Window]) -> np.ndarray:
        with rasterio.open(job[0]) as src:
            pixels: np.ndarray = src.read(1, window=job[1])
            return pixels

    with ThreadPoolExecutor(READ_THREADS) as pool:
        return list(pool.map(read, jobs))


def _load_ours(
    selection: SceneSelection,
    box: GeoBox,
    bands: tuple[str, ...],
    chunk_rows: int | None,
    join: bool = False,
    **options: Any,
) -> Any:
    with dask.config.set(scheduler="threads", num_workers=READ_THREADS):
        loaded = load_selection(selection, box, bands, GdalOptions(), chunk_rows=chunk_rows, **options)
        return loaded.compute() if join else loaded.persist()


def _timed(step: Any) -> float:
    start = time.perf_counter()
    step()
    return time.perf_counter() - start


@contextmanager
def _counting_source_pixels() -> Iterator[list[int]]:
    """Count the source pixels of every read: window reads of the pipeline's reader
    (cog_reader.read_window) and the reads it hands to odc-stac (planned in odc-stac's
    `_reproject_info_from_rio`)."""
    counted, lock = [0], threading.Lock()

    def count(window: tuple[slice, slice]) -> None:
        rows, cols = window
        with lock:
            counted[0] += max(0, rows.stop - rows.start) * max(0, cols.stop - cols.start)

    original_plan, original_read = odc_rio._reproject_info_from_rio, cog_reader.read_window

    def counting_plan(rdr: Any, dst_geobox: GeoBox, ttol: float) -> Any:
        info = original_plan(rdr, dst_geobox, ttol)
        count(cast(tuple[slice, slice], info.roi_src))
        return info

    def counting_read(file: Any, band: int, window: tuple[slice, slice], out: np.ndarray) -> None:
        count(window)
        original_read(file, band, window, out)

    odc_rio._reproject_info_from_rio, cog_reader.read_window = counting_plan, counting_read
    try:
        yield counted
    finally:
        odc_rio._reproject_info_from_rio, cog_reader.read_window = original_plan, original_read


def main() -> None:
    """Figure 2 alone: `python -m benchmarks.loading [--repeats N] [--amplification]` on the suite's
    task and data; with --amplification, figure 3 too (the task run through the pipeline, ~80 s)."""
    import argparse
    import tempfile
    import warnings
    from pathlib import Path

    from aef_pipeline.encode import required_halo
    from aef_pipeline.model import load_spec
    from aef_pipeline.plan import Period, plan_tasks
    from aef_pipeline.search import CatalogConfig, open_source, search_tile
    from aef_pipeline.testing import serve_catalogs
    from benchmarks.__main__ import QUADRANT_M
    from benchmarks.data import YEAR, bench_catalog, quadrant_bbox

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--repeats", type=int, default=3, help="best of this many, alternating")
    parser.add_argument("--amplification", action="store_true", help="also figure 3, read amplification")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    spec = load_spec("tiny")
    (task,) = plan_tasks(quadrant_bbox(QUADRANT_M, 1), (Period.year(YEAR),), spec.core)
    box = task.geobox().pad(required_halo(spec, False))
    catalog, _ = bench_catalog()
    with tempfile.TemporaryDirectory(prefix="aef-bench-") as tmp, serve_catalogs([catalog], Path(tmp)) as url:
        selection = search_tile(open_source(CatalogConfig(url)), box, task.period, spec.bands)
        if args.amplification:
            bbox = quadrant_bbox(QUADRANT_M, 1)
            request = RunRequest(bbox, (task.period,), Path(tmp) / "amp.zarr", CatalogConfig(url), model="tiny")
            amplification = read_amplification(task, request, selection, required_halo(spec, False))
            print(f"[3] read amplification {amplification.value:.3f} ({amplification.sizes}; {amplification.details})")
    figure = loader_efficiency(selection, box, spec.bands, repeats=args.repeats)
    details = figure.details or {}
    print(
        f"[2] loader efficiency {figure.value:.2f} ({figure.note}); ours {details['seconds_ours']:.2f} s "
        f"(joined {details['seconds_ours_joined']:.2f} s), plain {details['seconds_plain']:.2f} s; {figure.sizes}"
    )


if __name__ == "__main__":
    main()
