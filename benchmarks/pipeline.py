"""Figure 4: one task end to end against the sum of its stages, each measured alone, same run.

Alone: search (catalog already open), load (odc-stac + preprocess, computed into memory), encode
(the in-memory cube), write (into a fresh store). End to end: process_task, as a worker runs it
(lazy cube read in row blocks while encoding), into another fresh store. A ratio above 1 is
overhead the stages do not explain; below 1, reading overlaps with encoding.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import dask
import xarray as xr
from odc.geo.geobox import GeoBox

from aef_pipeline.encode import EncodeOptions, encode_cube, required_halo
from aef_pipeline.environment import TaskEnvironment
from aef_pipeline.load import GdalOptions, load_selection
from aef_pipeline.model import load_model
from aef_pipeline.plan import TileTask
from aef_pipeline.preprocess import preprocess
from aef_pipeline.run import RunRequest, TaskContext, layout, process_task
from aef_pipeline.search import SceneSelection, open_source, search_tile
from aef_pipeline.store import create_store, write_tile
from benchmarks.report import Figure

# The pipeline's read settings (a task's default environment).
READ_THREADS = TaskEnvironment().read_threads

T = TypeVar("T")


def task_cube(selection: SceneSelection, area: GeoBox, halo: int, bands: tuple[str, ...]) -> xr.Dataset:
    """The task's cube, computed into memory with the pipeline's read settings."""
    with dask.config.set(scheduler="threads", num_workers=READ_THREADS):
        loaded = load_selection(selection, area.pad(halo), bands, GdalOptions(), chunk_rows=EncodeOptions().read_rows)
        return preprocess(loaded, selection.scenes, bands, core=area).compute()


def pipeline_efficiency(task: TileTask, request: RunRequest, workdir: Path) -> Figure:
    loaded = load_model(request.model)
    spec, model, provenance = loaded.spec, loaded.encoder, loaded.provenance
    halo, area = required_halo(spec, request.overlap), task.geobox()
    source = open_source(request.catalog)
    alone: dict[str, float] = {}
    selection = _timed(alone, "search", lambda: search_tile(source, area.pad(halo), task.period, spec.bands))
    cube = _timed(alone, "load", lambda: task_cube(selection, area, halo, spec.bands))
    options = EncodeOptions(device=request.device, batch_size=request.batch_size)
    field = _timed(alone, "encode", lambda: encode_cube(cube, task.period, model, spec, options, provenance=provenance))
    stores = [dataclasses.replace(request, output=workdir / f"{n}.zarr", overwrite=True) for n in ("alone", "e2e")]
    for store in stores:
        create_store(store.output, [task.tile], store.periods, layout(store, spec), overwrite=True)
    _timed(alone, "write", lambda: write_tile(stores[0].output, task.tile, task.period, field, {"benchmark": True}))
    start = time.perf_counter()
    result = process_task(task, stores[1], TaskContext(loaded))
    end_to_end = time.perf_counter() - start
    return Figure(
        4,
        "pipeline efficiency (end-to-end / sum of stages alone)",
        end_to_end / sum(alone.values()),
        "",
        "<= 1.0",
        sizes=f"one task {area.shape[0]}x{area.shape[1]} px, {cube.sizes['time']} frames, {spec.name} on "
        f"{request.device}",
        note=f"end to end {end_to_end:.1f} s; alone " + ", ".join(f"{k} {v:.1f} s" for k, v in alone.items()),
        details={"end_to_end_s": end_to_end, "alone_s": alone, "task_stage_s": result.seconds},
    )


def _timed(times: dict[str, float], stage: str, step: Callable[[], T]) -> T:
    start = time.perf_counter()
    value = step()
    times[stage] = time.perf_counter() - start
    return value
