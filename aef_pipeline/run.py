"""The pipeline: plan -> per (tile, period) task: search -> load -> preprocess -> encode -> write.

    report = run(RunRequest(BBox(15.0, 46.1, 15.3, 46.3), (Period.year(2022),), Path("field.zarr")))

`plan_tasks` is pure. Each task covers the part of one tile the bbox needs, rounded out to whole
window cores (a 1 km^2 request computes a few windows, not a 20 km tile), and runs on a dask
worker; the client writes the template first and the run report last.
"""

from __future__ import annotations

import datetime as dt
import errno
import json
import math
import time
import traceback
import warnings
from collections.abc import Callable, Generator, Iterator
from contextlib import closing, contextmanager, suppress
from dataclasses import asdict, dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

from odc.geo.geobox import GeoBox
from odc.geo.geom import box

from aef_pipeline import __version__
from aef_pipeline.catalog import write_stac
from aef_pipeline.encode import EncodeOptions, encode_cube, required_halo
from aef_pipeline.environment import TaskEnvironment, applied, available_cores
from aef_pipeline.errors import AefWarning, StorageFullError
from aef_pipeline.grid import RESOLUTION_M, TILE_PIXELS, BBox, TileId, tiles_for_bbox
from aef_pipeline.load import load_selection, report_read_failures
from aef_pipeline.lock import store_lock
from aef_pipeline.model import ModelSpec, Provenance, STPEncoder, build_model, load_spec
from aef_pipeline.plan import Period
from aef_pipeline.preprocess import preprocess
from aef_pipeline.search import CatalogConfig, open_source, search_tile
from aef_pipeline.store import StoreLayout, create_store, finalize, finished, write_tile

# A full disk or an exhausted quota: the run cannot go on until someone frees space.
OUT_OF_SPACE = (errno.ENOSPC, errno.EDQUOT)

Window = tuple[int, int, int, int]
"""(row0, row1, col0, col1) pixels within a tile."""


@dataclass(frozen=True)
class RunRequest:
    """Everything one run needs; the only input of `run`."""

    bbox: BBox
    periods: tuple[Period, ...]
    output: Path
    catalog: CatalogConfig = field(default_factory=CatalogConfig)
    model: str = "tiny"
    """A spec name from models/ or a path to a spec file."""
    device: str = "auto"
    max_cloud_cover: float | None = None
    overwrite: bool = False
    storage: str = "int8"
    overlap: bool = False
    batch_size: int = 8
    """Windows per forward pass; part of what a field is (see encode.py): keep it for a store."""
    environment: TaskEnvironment = field(default_factory=TaskEnvironment)
    """Threads and GDAL settings of every task; torch threads are fixed when the run starts."""


@dataclass(frozen=True)
class TileTask:
    """One unit of work: the window of a tile that a bbox needs, for one period."""

    tile: TileId
    period: Period
    window: Window

    @property
    def key(self) -> str:
        """The dask key: explicit, because a task writes (it is not pure)."""
        r0, r1, c0, c1 = self.window
        return f"aef-{self.tile}-{self.period.label}-{r0}-{r1}-{c0}-{c1}"

    @property
    def pixels(self) -> int:
        r0, r1, c0, c1 = self.window
        return (r1 - r0) * (c1 - c0)

    def geobox(self) -> GeoBox:
        r0, r1, c0, c1 = self.window
        return self.tile.geobox[r0:r1, c0:c1]


@dataclass
class TaskResult:
    """What one task did, for the run report."""

    key: str
    tile: str
    period: str
    status: str
    """"done", "empty" (no usable scene), "skipped" (already complete) or "failed"."""
    pixels: int = 0
    scenes: list[str] = field(default_factory=list)
    dropped: list[dict[str, Any]] = field(default_factory=list)
    read_failures: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    error: str = ""
    out_of_space: bool = False
    """The failure was a full disk or quota: every later write would fail too, so the run stops."""


def plan_tasks(bbox: BBox, periods: tuple[Period, ...], spec: ModelSpec) -> list[TileTask]:
    """Every (tile window, period) the request needs, in a stable order. Pure: no I/O."""
    tasks = []
    for tile in tiles_for_bbox(bbox):
        window = task_window(tile, bbox, spec.core)
        if window is not None:
            tasks += [TileTask(tile, period, window) for period in periods]
    return tasks


def task_window(tile: TileId, bbox: BBox, core: int) -> Window | None:
    """The pixels of `tile` inside the bbox, rounded out to whole window cores (so the windows,
    and therefore the embeddings, are the same whatever the bbox)."""
    area = box(bbox.west, bbox.south, bbox.east if not bbox.crosses_antimeridian else 180.0, bbox.north,
               crs="EPSG:4326")  # fmt: skip
    parts = [area] if not bbox.crosses_antimeridian else [area, box(-180.0, bbox.south, bbox.east, bbox.north,
                                                                         crs="EPSG:4326")]  # fmt: skip
    geobox = tile.geobox
    windows = []
    for part in parts:
        projected = part.to_crs(tile.epsg, resolution=RESOLUTION_M * 10).intersection(geobox.extent)
        if projected.is_empty:
            continue
        left, bottom, right, top = projected.boundingbox
        x0, y0 = geobox.affine.c, geobox.affine.f
        c0, c1 = (left - x0) / RESOLUTION_M, (right - x0) / RESOLUTION_M
        r0, r1 = (y0 - top) / RESOLUTION_M, (y0 - bottom) / RESOLUTION_M
        windows.append((_down(r0, core), _up(r1, core), _down(c0, core), _up(c1, core)))
    if not windows:
        return None
    return (min(w[0] for w in windows), max(w[1] for w in windows), min(w[2] for w in windows),
            max(w[3] for w in windows))  # fmt: skip


def _down(value: float, core: int) -> int:
    return max(0, min(TILE_PIXELS, math.floor(value / core) * core))


def _up(value: float, core: int) -> int:
    return max(0, min(TILE_PIXELS, math.ceil(value / core) * core))


def prepare_store(request: RunRequest, spec: ModelSpec, provenance: Provenance, tasks: list[TileTask]) -> None:
    """The template, written once by the client before any task."""
    layout = StoreLayout(spec.name, provenance.description, request.storage)
    tiles = sorted({task.tile for task in tasks})
    create_store(request.output, tiles, request.periods, layout, overwrite=request.overwrite)


def process_task(task: TileTask, request: RunRequest) -> TaskResult:
    """One tile window and period, start to finish, in this process, in the request's environment."""
    with applied(request.environment):
        return _process_task(task, request)


def _process_task(task: TileTask, request: RunRequest) -> TaskResult:
    result = TaskResult(task.key, str(task.tile), task.period.label, "done", pixels=task.pixels)
    if finished(request.output, task.tile, task.period, task.window):
        result.status = "skipped"
        return result
    spec, model, provenance = loaded_model(request.model)
    halo = required_halo(spec, request.overlap)
    area = task.geobox()
    with _timer(result, "search"):
        selection = search_tile(
            open_source(request.catalog), area.pad(halo), task.period, spec.bands, request.max_cloud_cover
        )
    result.scenes = [info.item_id for info in selection.scenes]
    result.dropped = [asdict(skip) for skip in selection.skipped]
    if selection.empty:
        result.status = "empty"
        return result
    # The cube stays lazy: encode_cube reads it one row of windows at a time, so a task's memory
    # is a row block (L rows x the window's width x frames x bands) plus the model's activations,
    # whatever the tile holds. Its reads run on this worker's threads, where read failures are seen.
    options = EncodeOptions(device=request.device, batch_size=request.batch_size, overlap=request.overlap)
    gdal = request.environment.gdal
    with report_read_failures() as failures:
        with _timer(result, "load"):
            loaded = load_selection(selection, area.pad(halo), spec.bands, gdal, chunk_rows=options.read_rows)
            cube = preprocess(loaded, selection.scenes, spec.bands, core=area)
        with _timer(result, "encode"):  # includes the lazy reads of the reflectance bands
            embeddings = encode_cube(cube, task.period, model, spec, options, provenance=provenance)
    result.read_failures = list(failures)
    if result.read_failures and not int(embeddings.observations.max()):
        raise TileUnreadableError(
            f"nothing of tile {task.tile} {task.period.label} could be read ({len(result.read_failures)} unreadable "
            f"assets, e.g. {result.read_failures[0]}): nothing written; rerun to retry"
        )
    with _timer(result, "write"):
        record = {"scenes": result.scenes, "dropped": result.dropped, "read_failures": result.read_failures,
                  "model": spec.name, "model_weights": provenance.description,
                  "software": f"aef-pipeline {__version__}", "seconds": result.seconds}  # fmt: skip
        write_tile(request.output, task.tile, task.period, embeddings, record)
    return result


@lru_cache(maxsize=2)
def loaded_model(name: str) -> tuple[ModelSpec, STPEncoder, Provenance]:
    """The model, built once per process (dask workers each hold their own)."""
    spec = load_spec(name)
    model, provenance = build_model(spec)
    return spec, model, provenance


@contextmanager
def _timer(result: TaskResult, stage: str) -> Iterator[None]:
    """Record the block's wall time as the task's time for `stage`."""
    start = time.perf_counter()
    try:
        yield
    finally:
        result.seconds[stage] = round(time.perf_counter() - start, 3)


@dataclass
class RunReport:
    """The whole run: per-task results and totals; saved as JSON beside the store."""

    started: str
    request: dict[str, Any]
    tasks: list[TaskResult] = field(default_factory=list)
    seconds: float = 0.0

    def summary(self) -> str:
        count = {status: sum(1 for t in self.tasks if t.status == status)
                 for status in ("done", "empty", "skipped", "failed")}  # fmt: skip
        scenes = len({s for t in self.tasks for s in t.scenes})
        dropped = sum(len(t.dropped) for t in self.tasks)
        stages = {stage: round(sum(t.seconds.get(stage, 0.0) for t in self.tasks), 1)
                  for stage in ("search", "load", "encode", "write")}  # fmt: skip
        lines = [
            f"{count['done']} tile-periods done, {count['empty']} without scenes, {count['skipped']} already complete, "
            f"{count['failed']} failed; {scenes} scenes used, {dropped} dropped; {self.seconds:.1f} s "
            f"(task time per stage: {', '.join(f'{k} {v} s' for k, v in stages.items())})",
            *(f"  failed {t.tile} {t.period}: {t.error}" for t in self.tasks if t.status == "failed"),
        ]
        return "\n".join(lines)

    def save(self, path: Path) -> Path:
        target = path.with_name(path.stem + ".runs") / f"run-{self.started.replace(':', '')}.json"
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_suffix(".partial")  # a full disk must not leave half a report behind
        try:
            partial.write_text(json.dumps(asdict(self), indent=1, default=str))
            partial.replace(target)
        finally:
            partial.unlink(missing_ok=True)
        return target


class TileUnreadableError(RuntimeError):
    """Scenes were found for a tile-period but none of their pixels could be read."""


class TaskFailedWarning(AefWarning):
    """A tile-period failed; the others went on, and the report says why."""


Submit = Callable[[list[TileTask]], Generator[TaskResult, None, None]]
"""Runs tasks somewhere and yields their results as they finish (default: in this process)."""


def run(request: RunRequest, submit: Submit | None = None) -> RunReport:
    """Plan, write the template, run every task (through `submit`, default: in this process),
    record the report. `submit` is how a cluster plugs in (flows/ and the CLI use dask).

    A full disk stops the run with StorageFullError: every tile-period recorded so far is complete
    (records are written after their data, and zarr replaces chunk files atomically), the rest are
    redone by rerunning the same command once there is space."""
    started = time.perf_counter()
    request = fixed_threads(request, available_cores())
    report = RunReport(dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), _describe(request))
    spec, _, provenance = loaded_model(request.model)
    tasks = plan_tasks(request.bbox, request.periods, spec)
    with store_lock(request.output):
        try:
            prepare_store(request, spec, provenance, tasks)
            _collect((submit or _in_process(request))(tasks), report)
            finalize(request.output)
            write_stac(request.output)
        except (OSError, StorageFullError) as error:
            if not out_of_space(error):
                raise
            with suppress(OSError):  # on a full disk the report may not fit either
                report.save(request.output)
            raise StorageFullError(
                f"no space left on the device of {request.output} ({progress(request.output, tasks)} and "
                "recorded; the write that failed left no record): "
                "free some space or move the store, then rerun the same command to resume"
            ) from error
    report.seconds = round(time.perf_counter() - started, 2)
    report.save(request.output)
    return report


def _collect(results: Generator[TaskResult, None, None], report: RunReport) -> None:
    """Add each result to the report as it arrives; stop at the first full disk (and close the
    submitter, which cancels what is still queued)."""
    with closing(results):
        for result in results:
            report.tasks.append(result)
            if result.out_of_space:
                raise StorageFullError(result.error)
            if result.status == "failed":
                warnings.warn(f"{result.tile} {result.period} failed: {result.error}", TaskFailedWarning, 2)


def out_of_space(error: BaseException) -> bool:
    """Whether `error`, or an error that led to it, is a full disk or quota."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, StorageFullError) or (isinstance(seen, OSError) and seen.errno in OUT_OF_SPACE):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def progress(output: Path, tasks: list[TileTask]) -> str:
    """ "N of M tile-periods complete": how many of `tasks` the store records as complete. Safe on a
    store whose template was cut off half-written (a run stopped or interrupted while making it)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # zarr's, about an array without its metadata yet
            done = str(sum(finished(output, task.tile, task.period, task.window) for task in tasks))
    except Exception as error:
        done = f"? (the store could not be read: {type(error).__name__})"
    return f"{done} of {len(tasks)} tile-periods complete"


def fixed_threads(request: RunRequest, cores: int) -> RunRequest:
    """The request with its tasks' torch thread count fixed (`cores` unless it already is), so that
    every task of the run, retries included, computes with the same kernels."""
    if request.environment.torch_threads is not None:
        return request
    return replace(request, environment=replace(request.environment, torch_threads=max(1, cores)))


def attempt_task(task: TileTask, request: RunRequest) -> TaskResult:
    """process_task, with a failure recorded for the report instead of ending the whole run."""
    try:
        return process_task(task, request)
    except Exception as error:
        last = traceback.extract_tb(error.__traceback__)[-1]
        return TaskResult(
            task.key, str(task.tile), task.period.label, "failed", pixels=task.pixels,
            error=f"{type(error).__name__}: {error} (at {Path(last.filename).name}:{last.lineno})",
            out_of_space=out_of_space(error),
        )  # fmt: skip


def _in_process(request: RunRequest) -> Submit:
    def submit(tasks: list[TileTask]) -> Generator[TaskResult, None, None]:
        for task in tasks:
            yield attempt_task(task, request)

    return submit


def _describe(request: RunRequest) -> dict[str, Any]:
    return {"bbox": asdict(request.bbox), "periods": [p.label for p in request.periods],
            "output": str(request.output), "catalog": request.catalog.url,
            "collections": list(request.catalog.collections), "model": request.model,
            "torch_threads": request.environment.torch_threads}  # fmt: skip
