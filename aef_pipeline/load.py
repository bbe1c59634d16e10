"""Stage 3: read the selected products onto a tile's exact grid with odc-stac, lazily.

One frame per product (odc-stac `groupby="id"`, in the selection's order), so that each product is
harmonised by its own baseline before products of one overpass are fused (preprocess.py).
Reflectance bands are resampled bilinearly, SCL with nearest neighbour; DN 0 stays nodata.
"""

from __future__ import annotations

import copy as pycopy
import logging
import math
import re
import warnings
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any, Literal, TypeVar

import numpy as np
import pystac
import rasterio
import xarray as xr
from odc.geo.geobox import GeoBox
from odc.geo.xr import xr_coords

from aef_pipeline.cog_reader import COPY_FUSER, OpenFileDriver
from aef_pipeline.errors import AefWarning
from aef_pipeline.parsed_load import ParsedItems
from aef_pipeline.preprocess import MaskPolicy, preprocess, products_of_kept_frames
from aef_pipeline.providers import SCL, SceneInfo
from aef_pipeline.search import SceneSelection
from aef_pipeline.sentinel2 import BAND_BY_NAME

# Rows of a lazy cube's chunks (full width: each product is its own file).
DEFAULT_CHUNK_ROWS = 512
# Frames of a lazy cube's chunks. Each chunk is a dask task that enters GDAL's environment and is
# assembled into the block the encoder reads: one frame per chunk made these per-chunk costs as
# large as the reads themselves (docs/performance.md, figure 2). Sixteen frames loaded the
# benchmark task in 2.03 s against 2.21 s with eight (12 and 20: 2.19 and 2.08 s), and still split
# a row block of a year's 40-150 frames into 3-10 chunks per band for the read threads to share.
DEFAULT_CHUNK_FRAMES = 16
T = TypeVar("T")
# 20 m rows bilinearly doubled at a time (`_complete_doubled`).
_STRIP_ROWS = 8
# Nodata and dtype for every provider: Planetary Computer declares neither (no raster:bands), and
# odc-stac would then load float32 without nodata.
_STAC_CFG = {"*": {"assets": {"*": {"data_type": "uint16", "nodata": 0}, SCL: {"data_type": "uint8", "nodata": 0}}}}


class ReadFailureWarning(AefWarning):
    """An asset could not be read; its pixels stay nodata (masked), the rest of the product is used."""


@dataclass(frozen=True)
class GdalOptions:
    """GDAL settings for reading COGs over HTTP, chosen once at the entry point.

    odc-stac captures the rasterio environment active when the graph is built and ships it inside
    the dask graph, so every worker reads with exactly these settings (no environment variables
    to keep in step across machines).
    """

    http_max_retry: int = 5
    """Retries of a failed range request (GDAL_HTTP_MAX_RETRY)."""
    http_retry_delay_s: float = 1.0
    http_timeout_s: int = 60
    multiplex: bool = True
    """HTTP/2 multiplexing: many range requests on one connection."""
    merge_consecutive_ranges: bool = True
    block_cache_mb: int = 64
    """GDAL_CACHEMAX, in MB."""
    extra: tuple[tuple[str, str], ...] = field(default=())
    """Further GDAL options as (name, value) pairs, e.g. (("AWS_NO_SIGN_REQUEST", "YES"),)."""

    def env(self) -> dict[str, Any]:
        yes_no = {True: "YES", False: "NO"}
        return {
            # Each block is decoded once per task: a large block cache only holds memory (GDAL's
            # default is 5 % of RAM per process), so keep it small. In bytes: rasterio hands an int
            # straight to GDALSetCacheMax64 (GDAL's "< 100000 means MB" rule does not apply): a bare
            # 64 was a 64-byte cache. The setting is process-wide while the Env is entered.
            "GDAL_CACHEMAX": self.block_cache_mb * 2**20,
            # Never list a COG's directory on open: one request per file instead of hundreds.
            "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",
            "CPL_VSIL_CURL_ALLOWED_EXTENSIONS": ".tif,.tiff,.TIF",
            "GDAL_HTTP_MAX_RETRY": str(self.http_max_retry),
            "GDAL_HTTP_RETRY_DELAY": str(self.http_retry_delay_s),
            "GDAL_HTTP_TIMEOUT": str(self.http_timeout_s),
            "GDAL_HTTP_MULTIPLEX": yes_no[self.multiplex],
            "GDAL_HTTP_MERGE_CONSECUTIVE_RANGES": yes_no[self.merge_consecutive_ranges],
            **dict(self.extra),
        }


def load_selection(
    selection: SceneSelection,
    geobox: GeoBox,
    bands: Sequence[str],
    gdal: GdalOptions = GdalOptions(),
    chunk_rows: int | None = DEFAULT_CHUNK_ROWS,
    sign_url: Callable[[str], str] | None = None,
    reader: Any = None,
    chunk_frames: int = DEFAULT_CHUNK_FRAMES,
    scene_classes: SceneClasses | None = None,
) -> xr.Dataset:
    """A Dataset with one variable per band name (plus SCL), dims (time, y, x) on exactly `geobox`.

    `chunk_rows=None` reads eagerly into numpy; otherwise the arrays are lazy dask chunks of one
    `chunk_frames` frames, `chunk_rows` rows and the full width (the encoder reads the cube in such
    row blocks, so each chunk is read once). Unreadable assets are skipped (odc-stac
    `fail_on_error=False`) and reported by `report_read_failures`. `sign_url` rewrites asset URLs just before reading
    (Planetary Computer SAS tokens expire, so they are signed at read time, not at search time);
    the default signs when the `planetary-computer` package is installed. `reader` is an odc-stac
    reader driver (`odc.loader.types.ReaderDriver`; None: a `cog_reader.OpenFileDriver` of this
    load's own, which opens each file once; `odc.loader._rio.RioDriver()` is odc-stac's default):
    the seam through which tests put a failing or slow reader under a real run
    (aef_pipeline.testing.readers).
    Log records of the reads carry asset URLs: read inside `environment.applied` (every task does),
    which redacts signed-URL tokens from them.

    The 20 m bands are read on the 20 m grid that shares the geobox's edges, where odc-stac copies
    pixels without warping (Sentinel-2 tiles lie on that lattice), and brought to 10 m here: SCL by
    repeating each pixel 2 x 2, reflectance bilinearly, one row block at a time with a one-pixel
    rim of 20 m context, so a block needs no neighbour's chunks. Both give GDAL's values exactly
    (tests/test_cube.py) without its warp, which was the loader's main cost (docs/performance.md).
    A geobox off the 20 m lattice is warped by odc-stac.

    `scene_classes`: the selection's SCL, already read (`read_scene_classes`), is used instead of
    reading it again.
    """
    names = [*bands, SCL]
    rows = chunk_rows or geobox.shape[0]
    on_lattice = _on_lattice(geobox, 2) and rows % 2 == 0
    read = names if scene_classes is None else list(bands)
    coarse = [name for name in read if on_lattice and _native_resolution(name) == 20]
    fine = [name for name in read if name not in coarse]
    load = _odc_load(selection, sign_url, reader)
    parts = [] if scene_classes is None else [scene_classes.on_grid(chunk_rows, chunk_frames).to_dataset(name=SCL)]
    with rasterio.Env(**gdal.env()):
        if fine:
            parts.append(load(bands=fine, geobox=geobox, chunks=_row_chunks(chunk_rows, chunk_frames)))
        if SCL in coarse:
            coarse_rows = None if chunk_rows is None else max(1, chunk_rows // 2)
            parts.append(
                _doubled(
                    load(bands=[SCL], geobox=geobox.zoom_out(2), chunks=_row_chunks(coarse_rows, chunk_frames)), geobox
                )
            )
        if coarse_reflectance := [name for name in coarse if name != SCL]:
            lazy_frames = None if chunk_rows is None else chunk_frames
            parts.append(_upsampled(load, coarse_reflectance, geobox, rows, lazy_frames))
    merged = xr.merge(parts, compat="override", join="override", combine_attrs="override")
    return merged[names]


@dataclass(frozen=True)
class SceneClasses:
    """Every product's SCL over a 10 m geobox, read once and held in memory, at its native 20 m
    where the geobox lies on that lattice (a quarter of the bytes: about 140 MB for 150 frames of
    a whole tile with its halo), else warped onto the geobox."""

    data: xr.DataArray
    """(time, y, x) uint8, on `geobox` (factor 1) or on its 20 m lattice grid (factor 2)."""
    geobox: GeoBox
    factor: int

    def isel(self, frames: np.ndarray) -> SceneClasses:
        """Only the products where `frames` (bool, per product) is true."""
        return SceneClasses(self.data.isel(time=np.flatnonzero(frames)), self.geobox, self.factor)

    def on_grid(self, chunk_rows: int | None = None, chunk_frames: int = DEFAULT_CHUNK_FRAMES) -> xr.DataArray:
        """On the 10 m geobox: lazily doubled in `load_selection`'s chunks (row blocks of
        `chunk_rows`), or at once (None)."""
        coarse = self.data.to_dataset(name=SCL)
        if chunk_rows is not None:
            coarse = coarse.chunk({"time": chunk_frames, "y": max(1, chunk_rows // self.factor), "x": -1})
        if self.factor == 1:
            return coarse[SCL]
        return _doubled(coarse, self.geobox)[SCL]


def read_scene_classes(
    selection: SceneSelection,
    geobox: GeoBox,
    gdal: GdalOptions = GdalOptions(),
    chunk_rows: int | None = DEFAULT_CHUNK_ROWS,
    sign_url: Callable[[str], str] | None = None,
    reader: Any = None,
) -> SceneClasses:
    """Read every product's SCL over `geobox` now, on the current dask scheduler, so that the
    frames to keep are known before any band is read (`load_kept_frames`)."""
    rows = chunk_rows or geobox.shape[0]
    factor = 2 if _on_lattice(geobox, 2) and rows % 2 == 0 else 1
    grid = geobox.zoom_out(2) if factor == 2 else geobox
    load = _odc_load(selection, sign_url, reader)
    chunks = _row_chunks(None if chunk_rows is None else max(1, rows // factor))
    with rasterio.Env(**gdal.env()):
        data = load(bands=[SCL], geobox=grid, chunks=chunks)[SCL].compute()
    return SceneClasses(data, geobox, factor)


def load_kept_frames(
    selection: SceneSelection,
    geobox: GeoBox,
    core: GeoBox,
    bands: Sequence[str],
    policy: MaskPolicy,
    gdal: GdalOptions = GdalOptions(),
    chunk_rows: int | None = DEFAULT_CHUNK_ROWS,
    reader: Any = None,
) -> xr.Dataset:
    """The encoder's cube (`preprocess`) of the tile `core` read over `geobox`, whose bands are read
    only for the products of the frames it keeps: SCL first, for every product, to find the
    frames with a clear pixel in the core, then the bands of those products (their SCL is not
    read again). Lazy chunks hold several frames, so loading every product and dropping frames
    afterwards read the dropped ones with their chunk-mates (docs/performance.md, figure 3)."""
    classes = read_scene_classes(selection, geobox, gdal, chunk_rows, reader=reader)
    kept = products_of_kept_frames(classes.on_grid(chunk_rows), selection.scenes, core, policy)
    if not kept.all() and kept.any():  # with none kept, nothing is read below but the SCL
        scenes = _where(selection.scenes, kept)
        dropped = _frames(selection.scenes) - _frames(scenes)
        selection = replace(selection, items=_where(selection.items, kept), scenes=scenes)
        classes = classes.isel(kept)
    else:
        dropped = 0
    loaded = load_selection(selection, geobox, bands, gdal, chunk_rows, reader=reader, scene_classes=classes)
    cube = preprocess(loaded, selection.scenes, bands, core=core, policy=policy)
    cube.attrs["dropped_frames"] += dropped
    return cube


def _frames(scenes: Sequence[SceneInfo]) -> int:
    """Frames the products make: one per acquisition (preprocess fuses an overpass's products)."""
    return len({scene.acquisition for scene in scenes})


def _where(values: Sequence[T], keep: np.ndarray) -> tuple[T, ...]:
    return tuple(value for value, kept in zip(values, keep, strict=True) if kept)


def _odc_load(
    selection: SceneSelection, sign_url: Callable[[str], str] | None, reader: Any
) -> Callable[..., xr.Dataset]:
    """odc-stac's load of the selection's products, one frame each, in order, parsed once for all of
    the caller's loads (parsed_load); the bands, geobox and chunks are the caller's."""
    items = [
        canonical_item(item, dict(info.asset_keys))
        for item, info in zip(selection.items, selection.scenes, strict=True)
    ]
    return ParsedItems(
        items,
        reader or OpenFileDriver(),  # one for all of this task's loads: they share files
        stac_cfg=_STAC_CFG,
        resampling={"*": "bilinear", SCL: "nearest"},
        fuse_func=_fuser(items),
        fail_on_error=False,
        patch_url=sign_url or default_url_signer(),
    )


def _fuser(items: Sequence[pystac.Item]) -> str | None:
    """`cog_reader.copy_fuser` when every frame has one source (unique item ids), else None
    (odc-stac's nodata fuser)."""
    unique = len({item.id for item in items}) == len(items)
    return COPY_FUSER if unique else None


def _row_chunks(rows: int | None, frames: int = DEFAULT_CHUNK_FRAMES) -> dict[str, int | Literal["auto"]] | None:
    """odc-stac chunks of `frames` frames, `rows` rows and the full width; None loads eagerly."""
    return None if rows is None else {"time": frames, "y": rows, "x": -1}


def _native_resolution(name: str) -> int:
    return 20 if name == SCL else BAND_BY_NAME[name].resolution


def _on_lattice(geobox: GeoBox, factor: int) -> bool:
    """True when the geobox's edges lie on the lattice `factor` times coarser than its pixels."""
    affine = geobox.affine
    step = abs(affine.a) * factor
    height, width = geobox.shape
    return (
        affine.b == 0
        and affine.d == 0
        and height % factor == 0
        and width % factor == 0
        and math.isclose(affine.c / step, round(affine.c / step), abs_tol=1e-6)
        and math.isclose(affine.f / step, round(affine.f / step), abs_tol=1e-6)
    )


def _upsampled(
    load: Callable[..., xr.Dataset], names: list[str], geobox: GeoBox, rows: int, frames: int | None
) -> xr.Dataset:
    """`names` (20 m reflectance) on the 10 m `geobox`, bilinear, in blocks of `rows` rows: each block
    is read on its own 20 m grid padded by one pixel, so it is complete by itself (no block reads
    another's chunk; the encoder computes one block at a time). Lazy in chunks of `frames` frames,
    or eager (None)."""
    blocks = []
    for start in range(0, geobox.shape[0], rows):
        block = geobox[start : min(start + rows, geobox.shape[0]), :]
        coarse = load(bands=names, geobox=block.zoom_out(2).pad(1), chunks=_row_chunks(-1, frames) if frames else None)
        coords = {"time": coarse.time, **xr_coords(block, crs_coord_name="spatial_ref")}
        out = {}
        for name, variable in coarse.data_vars.items():
            data = variable.data
            if frames:
                doubled = data.map_blocks(
                    bilinear_doubled, chunks=(data.chunks[0], *((n,) for n in block.shape)), dtype=data.dtype
                )
            else:
                doubled = bilinear_doubled(data)
            out[name] = xr.DataArray(doubled, dims=("time", "y", "x"), coords=coords, attrs=variable.attrs)
        blocks.append(xr.Dataset(out, attrs=coarse.attrs))
    return xr.concat(blocks, dim="y") if len(blocks) > 1 else blocks[0]


def bilinear_doubled(padded: np.ndarray) -> np.ndarray:
    """A 20 m (..., h+2, w+2) array with a one-pixel rim -> its inner (h, w) at 10 m (..., 2h, 2w).

    GDAL's bilinear resampling for an exact factor of 2 (each 10 m pixel from its 2x2 20 m
    neighbours, weights 3/4 and 1/4 per axis), nodata neighbours left out and the weights of the
    others renormalised, and nodata (0) where the valid ones carry less than half the weight;
    rounded half up. Equal to GDAL's output, pixel for pixel, on the benchmark test bed (swath
    edges included).

    Computed in sixteenths (weights 9, 3, 3, 1): the weighted sums of uint16 values stay below
    2**24, so they are exact in float32 and the quotient is the correctly rounded one; the valid
    weights (0..16) are summed in uint8. Frames (leading indices) without nodata, most of them,
    skip the weights: their sums are divided by 16 in integers, which gives the same values in
    two thirds of the time (the loader's 20 m bands spend most of their time here)."""
    if padded.all():
        return _complete_doubled(padded)
    if padded.ndim < 3:
        return _doubled_with_nodata(padded)
    complete = padded.reshape(-1, *padded.shape[-2:]).all(axis=(-2, -1)).reshape(padded.shape[:-2])
    out = np.empty((*padded.shape[:-2], 2 * (padded.shape[-2] - 2), 2 * (padded.shape[-1] - 2)), padded.dtype)
    out[complete] = _complete_doubled(padded[complete])
    out[~complete] = _doubled_with_nodata(padded[~complete])
    return out


def _complete_doubled(padded: np.ndarray) -> np.ndarray:
    """`bilinear_doubled` of pixels that are all valid: every weight is 16, and (sum + 8) >> 4 is
    the sum's quotient rounded half up. Computed a strip of `_STRIP_ROWS` rows of every frame at
    a time, so that the uint32 sums stay in the CPU's cache: the whole block at once was
    memory-bound, 2.5x slower (53 -> 21 ms for 16 x 256 x 512 px, `timeit`, 2026-12-05)."""
    *lead, height, width = padded.shape
    out = np.empty((*lead, 2 * (height - 2), 2 * (width - 2)), padded.dtype)
    for start in range(0, height - 2, _STRIP_ROWS):
        stop = min(start + _STRIP_ROWS, height - 2)
        values = _doubled_sixteenths(padded[..., start : stop + 2, :], np.uint32)  # below 16 x 65535
        values += 8
        values >>= 4
        out[..., 2 * start : 2 * stop, :] = values
    return out


def _doubled_with_nodata(padded: np.ndarray) -> np.ndarray:
    """`bilinear_doubled` in general: the valid neighbours' weights renormalised."""
    weight = _doubled_sixteenths(padded > 0, np.uint8)
    values = _doubled_sixteenths(padded, np.float32)  # nodata is 0: it adds nothing to the sum
    with np.errstate(invalid="ignore", divide="ignore"):
        values /= weight
    values += 0.5  # then truncation is rounding half up (values are >= 0)
    np.copyto(values, 0, where=weight < 8)
    return values.astype(padded.dtype)


def _doubled_sixteenths(padded: np.ndarray, dtype: type[np.generic]) -> np.ndarray:
    """Linear interpolation of the inner pixels to twice the resolution, one axis after the other,
    in sixteenths: a 10 m pixel centre lies a quarter of a 20 m pixel from its own pixel's centre,
    so each is 3 x its own pixel plus 1 x the neighbour on its side, per axis."""
    *lead, height, width = padded.shape
    rows = np.empty((*lead, 2 * (height - 2), width), dtype)
    _interleave(padded, rows, axis=-2)
    out = np.empty((*lead, 2 * (height - 2), 2 * (width - 2)), dtype)
    _interleave(rows, out, axis=-1)
    return out


def _interleave(padded: np.ndarray, out: np.ndarray, axis: int) -> None:
    """out's even (odd) positions along `axis`: 3 x the inner pixel plus the one before (after)
    it, for the pixels inside `padded`'s one-pixel rim on that axis; written in place, without
    stacking copies."""
    n = padded.shape[axis]

    def take(part: slice, array: np.ndarray = padded) -> np.ndarray:
        index = [slice(None)] * array.ndim
        index[axis] = part
        return array[tuple(index)]

    centre = np.multiply(take(slice(1, n - 1)), 3, dtype=out.dtype)
    for side, neighbour in ((slice(0, None, 2), slice(0, n - 2)), (slice(1, None, 2), slice(2, n))):
        np.add(centre, take(neighbour), out=take(side, out), casting="unsafe")


def _doubled(coarse: xr.Dataset, geobox: GeoBox) -> xr.Dataset:
    """Nearest-neighbour doubling onto the 10 m `geobox`: each 20 m pixel becomes 2 x 2 (what
    GDAL's nearest resampling gives on aligned grids, without its warp)."""
    coords = {"time": coarse.time, **xr_coords(geobox, crs_coord_name="spatial_ref")}
    out = {}
    for name, variable in coarse.data_vars.items():
        doubled = variable.data.repeat(2, axis=-2).repeat(2, axis=-1)
        out[name] = xr.DataArray(doubled, dims=("time", "y", "x"), coords=coords, attrs=variable.attrs)
    return xr.Dataset(out, attrs=coarse.attrs)


def canonical_item(item: pystac.Item, asset_keys: dict[str, str]) -> pystac.Item:
    """A copy of the item whose assets are keyed by ESA band name ("B04", "SCL"), holding only the
    assets the pipeline reads, so one odc-stac call loads products of any provider.

    A shallow copy: its geometry, links and the assets' fields are the item's own (nothing here or
    in odc-stac writes to them). `Item.clone` deep-copies every asset and property, which took a
    third of building a task's load graph (docs/performance.md, figure 2)."""
    copy = pycopy.copy(item)
    copy.properties = dict(item.properties)
    copy.assets = {}
    for name, key in asset_keys.items():
        source = item.assets[key]
        copy.add_asset(
            name,
            pystac.Asset(
                source.href, source.title, source.description, source.media_type, source.roles, source.extra_fields
            ),
        )
    return copy


def selection_hrefs(selection: SceneSelection) -> set[str]:
    """The hrefs (absolute, unsigned: as odc-stac names them) of every asset read for a selection."""
    return {
        item.assets[key].get_absolute_href() or item.assets[key].href
        for item, info in zip(selection.items, selection.scenes, strict=True)
        for key in dict(info.asset_keys).values()
    }


def default_url_signer() -> Callable[[str], str] | None:
    """planetary_computer.sign when that package is installed (it leaves other hosts' URLs alone)."""
    try:
        import planetary_computer  # type: ignore[import-not-found]
    except ImportError:
        return None
    signer: Callable[[str], str] = planetary_computer.sign
    return signer


# A URL's query string: where signed URLs carry their tokens (Planetary Computer SAS "sig=", S3
# presigned "X-Amz-Signature="). Never written to a log, warning or report.
_QUERY = re.compile(r"((?:https?|s3|gs|az)://[^\s?'\"]*)\?[^\s'\"]*")


def redact(text: str) -> str:
    """`text` with every URL's query string replaced by "?<redacted>"."""
    return _QUERY.sub(r"\1?<redacted>", text)


# odc-stac's read failures, and GDAL's own messages as rasterio logs them (at INFO): the loggers
# whose messages hold the URLs being read. Tasks redact them (environment.redacted_logs).
REDACTED_LOGGERS = ("odc.loader._rio", "rasterio._env", "rasterio._base", "rasterio._io", "rasterio.env")


class RedactTokens(logging.Filter):
    """A filter for REDACTED_LOGGERS: every URL's query string (signed tokens) replaced."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = redact(str(record.msg))
        if isinstance(record.args, tuple):
            record.args = tuple(redact(arg) if isinstance(arg, str) else arg for arg in record.args)
        return True


_FAILURE = re.compile(r"Ignoring read failure reading (?P<uri>\S+):\d+ \(reason: '(?P<reason>.*)'\)", re.S)


@contextmanager
def report_read_failures(assets: Collection[str] | None = None) -> Iterator[list[str]]:
    """Collect the assets odc-stac skipped while computing in this process, and warn for each.

    odc-stac only logs a skipped read; this turns each log record into a ReadFailureWarning naming
    the asset, and yields the list for the run report. Reads on other processes (a distributed
    cluster) are seen by the worker that does them: compute a tile within one task to collect them.
    `assets` (hrefs, unsigned) keeps only the failures of those assets: tasks that run side by side
    in one process see each other's log records.
    """
    failures: list[str] = []
    handler = _FailureHandler(failures, None if assets is None else tuple(assets))
    logger = logging.getLogger("odc.loader._rio")
    logger.addHandler(handler)
    try:
        yield failures
    finally:
        logger.removeHandler(handler)
    for failure in failures:
        warnings.warn(f"unreadable asset skipped, its pixels masked: {failure}", ReadFailureWarning, stacklevel=3)


class _FailureHandler(logging.Handler):
    def __init__(self, sink: list[str], assets: tuple[str, ...] | None) -> None:
        super().__init__(level=logging.WARNING)
        self._sink = sink
        self._assets = assets
        """Hrefs whose failures are this handler's; None: every failure."""

    def emit(self, record: logging.LogRecord) -> None:
        match = _FAILURE.match(record.getMessage())
        if not match:
            return
        uri = match["uri"]
        if self._assets is not None and not uri.startswith(self._assets):
            return  # another task's asset (signed URLs and readers' names extend the href)
        if not any(entry.startswith(uri + " ") for entry in self._sink):  # once per asset
            self._sink.append(f"{uri} ({match['reason'].splitlines()[0][:200]})")
