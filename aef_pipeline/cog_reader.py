"""An odc-stac reader driver that opens each COG once per task, not once per chunk.

odc-stac's rasterio driver opens, plans, reads and closes the file for every chunk it fills (a
frame's row block of one band), and plans each read's windows afresh; on our benchmark data the
opens and plans cost about as much as GDAL's decoding (docs/performance.md, figure 2). This
driver plugs into odc-stac's own seam (`odc.stac.load(driver=...)`):

- each file is opened once per driver, and the driver is made once per task's load
  (`load.load_selection`), so all of a task's loads (10 m bands, SCL, the 20 m blocks) share the
  handles; a handle is read by one thread at a time (a rasterio dataset is not thread-safe);
- odc-geo's read plan (`compute_reproject_roi`) is made once per pair of grids: the products of
  one tile share their grids, so a task has a few pairs and hundreds of reads;
- a read that pastes source pixels onto the grid (same CRS and pixel size, whole-pixel offset:
  every Sentinel-2 read of a tile task) is a window read from the open handle, with odc-stac's
  nodata rules. Every other read (warps, overviews, band lists) and every read that fails is
  handed to odc-stac's own `rio_read`, so warping, and the skipping and logging of unreadable
  assets, stay odc-stac's (a file that failed is not tried again by this driver).

The handles close when the task's cube is released (the driver goes with it), or past `max_open`
files (least recently used first). odc-loader's `LocalContext` carries a "file handle cache goes
here" note: this is that cache, kept on our side until odc-loader has one.
"""

from __future__ import annotations

import threading
import uuid
import weakref
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Literal, cast

import dask.array as da
import numpy as np
import rasterio
import rasterio.errors
from dask.highlevelgraph import HighLevelGraph, Layer, MaterializedLayer
from odc.geo.converters import rio_geobox
from odc.geo.geobox import GeoBox
from odc.geo.overlap import ReprojectInfo, compute_reproject_roi
from odc.geo.roi import roi_is_empty, roi_shape, w_
from odc.loader._builder import _dask_open_reader
from odc.loader._reader import (
    nodata_mask,
    resolve_band_query,
    resolve_dst_dtype,
    resolve_dst_fill_value,
    resolve_dst_nodata,
    resolve_src_nodata,
    same_nodata,
)
from odc.loader._rio import GlobalContext, capture_rio_env, rio_env, rio_read
from odc.loader.types import RasterLoadParams, RasterSource

# Far above the files of one task (40-60 frames x 6 assets): a task reads its files in turn, row
# block after row block, so a bound below that would evict every handle before its next use.
DEFAULT_MAX_OPEN = 1024


class _OpenFile:
    """One open dataset, its grid, and the lock that keeps its reads one at a time."""

    def __init__(self, uri: str) -> None:
        self.dataset = rasterio.open(uri, "r", sharing=False)
        self.geobox = rio_geobox(self.dataset)
        self.lock = threading.Lock()

    def close(self) -> None:
        with self.lock:
            self.dataset.close()


_GridKey = tuple[str, Any, tuple[int, int]]


def _grid_key(geobox: GeoBox) -> _GridKey:
    """A grid as a dict key: hashing a GeoBox hashes its pyproj CRS, which writes out its WKT
    every time (a tenth of a task's load time, counted)."""
    return (str(geobox.crs), geobox.affine, geobox.shape.yx)


class OpenFiles:
    """The files a driver has opened, by URI, and its read plans; thread-safe.

    odc-stac's dask graphs make the readers in tasks of their own and send them to the tasks that
    read, maybe in another worker process. Pickled, this is its token: unpickled in a process that
    already holds the same token's files (a worker reading several chunks of one load), it is
    those files; elsewhere it starts empty and opens its own."""

    def __init__(self, max_open: int = DEFAULT_MAX_OPEN, token: str | None = None) -> None:
        self.max_open = max_open
        self.token = token or uuid.uuid4().hex
        self._files: OrderedDict[str, _OpenFile] = OrderedDict()
        self._failed: set[str] = set()
        self._plans: dict[tuple[_GridKey, _GridKey, float], ReprojectInfo] = {}
        self._opening: dict[str, threading.Lock] = {}
        """A lock per file being opened now, held by the thread opening it."""
        self._lock = threading.Lock()

    def __reduce__(self) -> tuple[Any, tuple[str, int]]:
        return (_files_of_token, (self.token, self.max_open))

    def get(self, uri: str) -> _OpenFile | None:
        """The open file, or None where opening it failed (then odc-stac's reader takes over).

        A file is opened by one thread; others asking for it meanwhile wait for that open (two row
        blocks of one band, read at once, ask for the same files in the same order: without the
        wait, one file in six of the benchmark task was opened twice)."""
        with self._lock:
            if (known := self._known(uri)) is not None:
                return known or None
            opening = self._opening.setdefault(uri, threading.Lock())
        with opening:  # outside the files' lock: an open over HTTP takes a round trip
            with self._lock:
                if (known := self._known(uri)) is not None:
                    return known or None  # the thread this one waited for opened it
            try:
                opened: _OpenFile | None = _OpenFile(uri)
            except rasterio.errors.RasterioError:
                opened = None
            with self._lock:
                self._opening.pop(uri, None)
                if opened is None:
                    self._failed.add(uri)
                    return None
                self._files[uri] = opened
                evicted = [self._files.popitem(last=False)[1] for _ in range(len(self._files) - self.max_open)]
        for old in evicted:
            old.close()
        return opened

    def _known(self, uri: str) -> _OpenFile | Literal[False] | None:
        """Under the lock: the open file (now the most recently used), False where it failed, None
        where it is not open."""
        if uri in self._failed:
            return False
        if (file := self._files.get(uri)) is not None:
            self._files.move_to_end(uri)
        return file

    def forget(self, uri: str) -> None:
        """Stop using `uri`'s handle (a read from it failed)."""
        with self._lock:
            self._failed.add(uri)
            file = self._files.pop(uri, None)
        if file is not None:
            file.close()

    def read_plan(self, src: GeoBox, dst: GeoBox, ttol: float) -> ReprojectInfo:
        """odc-geo's plan of a read from grid `src` onto grid `dst`, made once per pair."""
        key = (_grid_key(src), _grid_key(dst), ttol)
        with self._lock:
            plan = self._plans.get(key)
        if plan is None:
            plan = compute_reproject_roi(src, dst, ttol=ttol)
            with self._lock:
                self._plans[key] = plan
        return plan


# The OpenFiles alive in this process, by token: filled as graphs' readers arrive, emptied as the
# last reader or driver of a load is dropped (the handles then close with their datasets).
_LIVE_FILES: weakref.WeakValueDictionary[str, OpenFiles] = weakref.WeakValueDictionary()


def _files_of_token(token: str, max_open: int) -> OpenFiles:
    """This process's files of `token` (see OpenFiles)."""
    files = _LIVE_FILES.get(token)
    if files is None:
        files = _LIVE_FILES.setdefault(token, OpenFiles(max_open, token))
    return files


class OpenFileReader:
    """Reads one raster source through the driver's open handle (see the module doc)."""

    def __init__(self, src: RasterSource, files: OpenFiles) -> None:
        self._src = src
        self._files = files

    def read(
        self,
        cfg: RasterLoadParams,
        dst_geobox: GeoBox,
        *,
        dst: np.ndarray | None = None,
        selection: Any = None,
    ) -> tuple[tuple[slice, slice], np.ndarray]:
        if dst is None and selection is None:  # what odc-stac's chunk filler asks for
            pasted = self._paste(cfg, dst_geobox)
            if pasted is not None:
                return cast(tuple[tuple[slice, slice], np.ndarray], pasted)  # a DeferredWindow is for copy_fuser only
        return rio_read(self._src, cfg, dst_geobox, dst=dst, selection=selection)

    def _paste(
        self, cfg: RasterLoadParams, dst_geobox: GeoBox
    ) -> tuple[tuple[slice, slice], np.ndarray | DeferredWindow] | None:
        """The read as a window of the open file, or None where it is odc-stac's to do. With
        `copy_fuser` (one source per frame) the window is read later, by the fuser, straight into
        the chunk (`DeferredWindow`)."""
        file = self._files.get(self._src.uri)
        if file is None or not isinstance(file.geobox, GeoBox):  # failed, or placed by GCPs
            return None
        ttol = 0.9 if cfg.nearest else 0.05  # odc-stac's tolerance for "no resampling needed"
        plan = self._files.read_plan(file.geobox, dst_geobox, ttol)
        band = resolve_band_query(self._src, file.dataset.count)
        if not (isinstance(band, int) and plan.paste_ok and plan.read_shrink == 1):
            return None
        roi = cast(tuple[slice, slice], plan.roi_dst)
        dtype = resolve_dst_dtype(file.dataset.dtypes[band - 1], cfg)
        src_nodata = resolve_src_nodata(file.dataset.nodatavals[band - 1], cfg)
        dst_nodata = resolve_dst_nodata(dtype, cfg, src_nodata)
        window = DeferredWindow(self, cfg, dst_geobox, file, band, plan, (src_nodata, dst_nodata), dtype)
        if cfg.fuser_fqn == COPY_FUSER and not roi_is_empty(roi):
            return roi, window
        pixels = np.empty(roi_shape(roi), dtype=dtype)
        if not window.read_into(pixels):
            return None  # odc-stac's reader tries from a fresh open, and skips and logs a failure
        return roi, pixels


class DeferredWindow:
    """A pasting read not done yet: `copy_fuser` reads it straight into the chunk, which saves a
    temporary array and a copy of every pixel (odc-stac asks a reader for new pixels, then fuses
    them into the chunk). Shaped like the pixels it stands for, as odc-stac checks."""

    def __init__(
        self,
        reader: OpenFileReader,
        cfg: RasterLoadParams,
        dst_geobox: GeoBox,
        file: _OpenFile,
        band: int,
        plan: ReprojectInfo,
        nodata: tuple[float | int | None, float | int | None],
        dtype: np.dtype[Any],
    ) -> None:
        self._reader, self._cfg, self._dst_geobox = reader, cfg, dst_geobox
        self._file, self._band, self._plan, self._nodata = file, band, plan, nodata
        self.shape = roi_shape(plan.roi_dst)
        self.ndim = len(self.shape)
        self.dtype = dtype

    def read_into(self, out: np.ndarray) -> bool:
        """Fill `out` (the window's shape) with the window's pixels, nodata rules applied; False
        where the read failed (the file is then given up)."""
        src_nodata, dst_nodata = self._nodata
        if roi_is_empty(self._plan.roi_src):
            if dst_nodata is not None:
                out[...] = dst_nodata
            return True
        try:
            read_window(self._file, self._band, cast(tuple[slice, slice], self._plan.roi_src), out)
        except rasterio.errors.RasterioError:
            self._reader._files.forget(self._reader._src.uri)
            return False
        if dst_nodata is not None and not same_nodata(src_nodata, dst_nodata):
            np.copyto(out, dst_nodata, where=nodata_mask(out, src_nodata))
        return True

    def fuse_into(self, dst: np.ndarray) -> None:
        """The read, into `dst`; where it fails, odc-stac's own reader reads the source (it skips
        and logs an unreadable asset, leaving nodata, or raises with fail_on_error)."""
        if self.read_into(dst):
            return
        cfg = self._cfg
        dst[...] = resolve_dst_fill_value(dst.dtype, cfg, resolve_src_nodata(cfg.fill_value, cfg))  # as odc-stac fills
        roi, pixels = rio_read(self._reader._src, cfg, self._dst_geobox)
        if pixels.size:
            _place(dst, cast(tuple[slice, slice], self._plan.roi_dst), roi, pixels)


def _place(dst: np.ndarray, dst_roi: tuple[slice, slice], roi: tuple[slice, slice], pixels: np.ndarray) -> None:
    """Copy the part of `pixels` (at `roi` of a grid) that falls in `dst` (at `dst_roi` of it)."""
    into, out_of = [], []
    for ours, theirs in zip(dst_roi, roi, strict=True):
        start, stop = max(ours.start, theirs.start), min(ours.stop, theirs.stop)
        if stop <= start:
            return
        into.append(slice(start - ours.start, stop - ours.start))
        out_of.append(slice(start - theirs.start, stop - theirs.start))
    dst[tuple(into)] = pixels[tuple(out_of)]


def copy_fuser(dst: np.ndarray, src: np.ndarray | DeferredWindow) -> None:
    """odc-stac fuser for a frame read from one file: a plain copy, or the deferred read itself.

    odc-stac fills each chunk of a frame with nodata, reads every source of the frame into a new
    array and copies it in where the chunk is still nodata. With `groupby="id"` and unique ids a
    frame has one source, so the masked copy (a nodata mask over the chunk, then a masked copy: 4 %
    of the load in a profile) gives exactly what a plain copy does."""
    if isinstance(src, DeferredWindow):
        src.fuse_into(dst)
    else:
        np.copyto(dst, src)


COPY_FUSER = f"{__name__}.{copy_fuser.__name__}"
"""`copy_fuser`'s importable name, as odc-stac's `fuse_func` takes it."""


def _opens_a_reader_of(task: Any, driver: OpenFileDriver) -> bool:
    """True for odc-loader's task `(_dask_open_reader, source, driver, env, load_state)` of `driver`."""
    return isinstance(task, tuple) and len(task) == 5 and task[0] is _dask_open_reader and task[2] is driver


def read_window(file: _OpenFile, band: int, window: tuple[slice, slice], out: np.ndarray) -> None:
    """Read `window` of `band` into `out`, one thread at a time per file (benchmarks count the
    source pixels read here)."""
    with file.lock:
        file.dataset.read(band, out=out, window=w_[window])


class OpenFileDriver:
    """odc-stac reader driver (`odc.loader.types.ReaderDriver`) keeping its files open.

    Make one per task: it holds that task's handles. Pickled (a graph sent to worker processes),
    it shares the handles of the process it arrives in (see OpenFiles)."""

    def __init__(self, max_open: int = DEFAULT_MAX_OPEN) -> None:
        self.max_open = max_open
        self.files = _files_of_token(uuid.uuid4().hex, max_open)

    def new_load(self, geobox: GeoBox, *, chunks: dict[str, int] | None = None) -> GlobalContext:
        return GlobalContext(geobox, chunks=chunks)

    def finalise_load(self, load_state: GlobalContext) -> GlobalContext:
        return load_state  # handles outlive a load: the task's other loads read the same files

    def capture_env(self) -> dict[str, Any]:
        return capture_rio_env()

    @contextmanager
    def restore_env(self, env: dict[str, Any], load_state: GlobalContext) -> Iterator[OpenFiles]:
        with rio_env(**env):
            yield self.files

    def open(self, src: RasterSource, ctx: OpenFiles) -> OpenFileReader:
        return OpenFileReader(src, ctx)

    def with_readers_made(self, array: da.Array) -> da.Array:
        """`array` (one band of odc-loader's lazy load with this driver) with its reader-opening
        tasks replaced by the readers themselves.

        odc-loader's graph opens each (source, band) in a task of its own, `_dask_open_reader`,
        which enters the GDAL environment to call `open`; here `open` only pairs the source with
        this driver's files (no I/O, nothing from the environment), so the readers are made now
        and travel in the graph as data. On the benchmark task those tasks were 287 of the load's
        341, and each went through dask's scheduler (docs/performance.md, figure 2). Tasks of any
        other shape are left as they are."""
        graph = array.__dask_graph__()
        if not isinstance(graph, HighLevelGraph):
            return array
        layers = {name: self._readers_made(layer) for name, layer in graph.layers.items()}
        made = HighLevelGraph(layers, graph.dependencies)
        return da.Array(made, array.name, array.chunks, dtype=array.dtype, meta=array._meta)  # type: ignore[no-untyped-call]

    def _readers_made(self, layer: Layer) -> Layer:
        tasks = dict(layer)
        opens = {key: task for key, task in tasks.items() if _opens_a_reader_of(task, self)}
        if not opens:
            return layer
        return MaterializedLayer({**tasks, **{key: self.open(task[1], self.files) for key, task in opens.items()}})

    md_parser = None
    dask_reader = None
    aux_reader = None
