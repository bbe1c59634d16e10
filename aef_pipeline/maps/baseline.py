"""The raw-pixel baseline at points: per-band means of clear Sentinel-2 L2A reflectance.

    found = baseline_features(read_points("labels.geojson"), Period.year(2022), CatalogConfig(url))
    found.annual     # (n, 5): B02_mean ... B11_mean, the mean of each band's valid observations
    found.monthly    # (n, 5 * 12): B02_2022-01 ... B11_2022-12, the same per calendar month

An embedding is only worth its cost if it beats these. The pixels come through the embedding
pipeline's own path, search_tile -> load_selection -> preprocess, so the baseline sees the same
products, the same harmonisation (per processing baseline), the same per-pixel cloud mask and
the same resampling of the 20 m bands as the encoder does.

Points are grouped by tile of the global grid. Each tile loads only the smallest window of its
10 m grid that holds its points, rounded out to whole 20 m pixels (so a pixel's value does not
depend on the window), lazily in row blocks of READ_ROWS; only the blocks that hold a point are
read (plus the window's SCL, which preprocess reads whole to drop frames without a clear pixel).
Memory stays a few blocks of one frame, whatever the window's size or the number of frames; what
is read grows with the window's width times the row blocks its points touch. Each point takes
the pixel it falls in (the nearest pixel centre); a polygon takes its representative point.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import geopandas as gpd
import numpy as np
import xarray as xr
from numpy.typing import NDArray
from odc.geo.geobox import GeoBox
from pyproj import Transformer

from aef_pipeline.environment import TaskEnvironment, applied
from aef_pipeline.errors import UserInputError
from aef_pipeline.grid import RESOLUTION_M, TILE_PIXELS, UTM_LATITUDES, TileId, utm_epsg, utm_zone
from aef_pipeline.load import load_selection, report_read_failures
from aef_pipeline.model.spec import load_spec
from aef_pipeline.plan import Period
from aef_pipeline.preprocess import preprocess
from aef_pipeline.search import CatalogConfig, SceneSource, open_source, search_tile
from aef_pipeline.sentinel2 import BAND_BY_NAME

FloatArray = NDArray[np.float32]
IntArray = NDArray[np.int64]

DEFAULT_SPEC = "tiny"
"""Whose input bands the baseline uses by default: it describes what the encoder is given."""
# Rows of a lazy read block. A point costs reading its block (these rows x the window's width, one
# frame at a time), so blocks are smaller than the encoder's 512 rows, which sparse points would
# mostly read for nothing. Even, so the 20 m bands stay on their own lattice (load.py).
READ_ROWS = 128


@dataclass(frozen=True)
class BaselineFeatures:
    """The baseline's features, one row per input point in the input's order; NaN rows for the
    points without any valid observation in the period."""

    annual: FloatArray
    """(n, bands): each band's mean over the period's valid observations of the point's pixel."""
    monthly: FloatArray
    """(n, bands * months): each band's mean per calendar month of the period, band by band, months
    in order. A month without a valid observation at the point takes the point's mean over the
    whole period (`annual`), so a row is finite wherever the point has any valid observation."""
    names_annual: list[str]
    """ "B02_mean", ... one per column of `annual`."""
    names_monthly: list[str]
    """ "B02_2022-01", ... one per column of `monthly`."""
    scenes: int
    """Distinct Sentinel-2 products read, over every tile."""
    points_without_data: int
    """Rows of NaN: points that no product imaged clear in the period (or outside every product)."""


@dataclass(frozen=True, eq=False)
class PointWindow:
    """The pixels of one tile that some points fall in, and where each of those points lies."""

    tile: TileId
    geobox: GeoBox
    """The smallest window of the tile's 10 m grid holding the points, in whole 20 m pixels."""
    points: IntArray
    """Rows of the input that fall in this tile."""
    rows: IntArray
    """Each point's pixel row in `geobox`."""
    cols: IntArray
    """Each point's pixel column in `geobox`."""


def baseline_features(
    points: gpd.GeoDataFrame,
    period: Period,
    catalog: CatalogConfig,
    *,
    bands: Sequence[str] | None = None,
    environment: TaskEnvironment | None = None,
) -> BaselineFeatures:
    """Annual and monthly mean reflectance of `bands` at `points` (lon/lat; any other declared CRS
    is reprojected) from the products of `catalog` in `period`.

    Only observations the pipeline's validity mask keeps count (cloud, shadow, cirrus, saturated
    and nodata pixels do not). A month of the period with no valid observation at a point is
    filled with that point's mean over the period; a point with none at all gets a NaN row and is
    counted in `points_without_data`. A tile with no product warns (search.NoScenesWarning).
    `environment` sets the read threads, GDAL options and reader (default: TaskEnvironment()).
    `bands` default to the input bands of the DEFAULT_SPEC model spec, in its order."""
    names = checked_bands(bands if bands is not None else load_spec(DEFAULT_SPEC).bands)
    lon, lat = point_lonlat(points)
    months = period_months(period)
    annual = np.full((len(lon), len(names)), np.nan, np.float32)
    monthly = np.full((len(lon), len(names) * len(months)), np.nan, np.float32)
    environment = environment or TaskEnvironment()
    source, scenes = open_source(catalog), set[str]()
    for window in point_windows(lon, lat):
        values, valid, times, read = read_window(source, window, period, names, environment)
        annual[window.points], monthly[window.points] = mean_features(
            values, valid, month_index(times, months), len(months)
        )
        scenes |= read
    return BaselineFeatures(
        annual,
        monthly,
        [f"{band}_mean" for band in names],
        [f"{band}_{month}" for band in names for month in months.astype(str)],
        len(scenes),
        int(np.isnan(annual).any(axis=1).sum()),
    )


def checked_bands(bands: Sequence[str]) -> list[str]:
    """The band names, refused unless they are distinct Sentinel-2 bands."""
    names = list(bands)
    known = ", ".join(BAND_BY_NAME)
    if not names:
        raise UserInputError(f"no band given for the baseline: name some of {known}")
    unknown = [name for name in names if name not in BAND_BY_NAME]
    if unknown:
        raise UserInputError(f"band {', '.join(unknown)} is not a Sentinel-2 L2A band: choose from {known}")
    if len(set(names)) != len(names):
        raise UserInputError(f"bands {', '.join(names)} name a band twice: give each band once")
    return names


def point_lonlat(points: gpd.GeoDataFrame) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Longitude and latitude of each point (of each polygon's representative point)."""
    if len(points) == 0:
        raise UserInputError("no points given for the baseline: pass at least one point")
    if points.crs is None:
        raise UserInputError("the points declare no CRS: set it (e.g. points.set_crs('EPSG:4326')) or use read_points")
    geometry = points.geometry.to_crs("EPSG:4326")
    missing = (geometry.isna() | geometry.is_empty).to_numpy()
    if missing.any():
        rows = np.flatnonzero(missing)[:5].tolist()
        raise UserInputError(f"points {rows} have no geometry: drop them or give their coordinates")
    where = geometry.representative_point()
    lon, lat = where.x.to_numpy(np.float64), where.y.to_numpy(np.float64)
    outside = ~(np.isfinite(lon) & (np.abs(lon) <= 180) & (lat >= UTM_LATITUDES[0]) & (lat <= UTM_LATITUDES[1]))
    if outside.any():
        row = int(np.flatnonzero(outside)[0])
        raise UserInputError(
            f"point {row} at lon {lon[row]:.6g} lat {lat[row]:.6g} is outside the product's area "
            f"(latitudes {UTM_LATITUDES[0]:g}..{UTM_LATITUDES[1]:g}): drop it or fix its coordinates"
        )
    return lon, lat


def period_months(period: Period) -> NDArray[np.datetime64]:
    """The calendar months the period touches (datetime64[M]): 12 for a calendar year."""
    first, last = (when.astimezone(dt.UTC).replace(tzinfo=None) for when in (period.start, period.end))
    last -= dt.timedelta(microseconds=1)  # the end is excluded
    return np.arange(np.datetime64(first, "M"), np.datetime64(last, "M") + 1)


def point_windows(lon: NDArray[np.float64], lat: NDArray[np.float64]) -> list[PointWindow]:
    """The points grouped by tile of the global grid, each tile with the smallest window of its
    grid that holds them, in tile order. Each point lies in the pixel whose square holds it (whose
    centre is nearest; one on a pixel edge goes to the pixel east or north of it)."""
    windows = []
    for (zone, south), members in _groups(np.stack([[utm_zone(x) for x in lon], lat < 0], axis=1)):
        hemisphere = "S" if south else "N"
        to_utm = Transformer.from_crs(4326, utm_epsg(zone, hemisphere), always_xy=True)
        x, y = (np.asarray(v) for v in to_utm.transform(lon[members], lat[members]))
        # Pixels of the zone's grid, counted from its origin (eastwards, northwards): a tile is a
        # block of TILE_PIXELS of them (grid.TileId), so a point's tile is integer arithmetic.
        across, up = np.floor(x / RESOLUTION_M).astype(np.int64), np.floor(y / RESOLUTION_M).astype(np.int64)
        for (col, row), inside in _groups(np.stack([across // TILE_PIXELS, up // TILE_PIXELS], axis=1)):
            tile = TileId(zone, hemisphere, col, row)
            rows = TILE_PIXELS - 1 - up[inside] % TILE_PIXELS  # the tile's rows run southwards
            windows.append(_window(tile, members[inside], rows, across[inside] % TILE_PIXELS))
    return sorted(windows, key=lambda window: window.tile)


def _window(tile: TileId, points: IntArray, rows: IntArray, cols: IntArray) -> PointWindow:
    """The smallest window of the tile holding these pixels, its edges rounded out to even pixels:
    on the tile's 20 m lattice, the 20 m bands are read without warping and doubled exactly as for
    the whole tile (load.load_selection), so a pixel's value does not depend on the window."""
    r0, c0 = 2 * (rows.min() // 2), 2 * (cols.min() // 2)
    r1, c1 = 2 * (rows.max() // 2 + 1), 2 * (cols.max() // 2 + 1)
    return PointWindow(tile, tile.geobox[int(r0) : int(r1), int(c0) : int(c1)], points, rows - r0, cols - c0)


def _groups(keys: NDArray[Any]) -> list[tuple[tuple[int, ...], IntArray]]:
    """The distinct rows of `keys` (n, k), each with the indices of the rows equal to it."""
    distinct, inverse = np.unique(keys.astype(np.int64), axis=0, return_inverse=True)
    inverse = inverse.ravel()
    return [(tuple(int(v) for v in key), np.flatnonzero(inverse == i)) for i, key in enumerate(distinct)]


def read_window(
    source: SceneSource, window: PointWindow, period: Period, bands: list[str], environment: TaskEnvironment
) -> tuple[FloatArray, NDArray[np.bool_], NDArray[np.datetime64], set[str]]:
    """The window's points through the pipeline's path: their reflectance (time, band, point),
    validity (time, point), the frames' times and the ids of the products read. Only the read
    blocks that hold a point are computed."""
    with applied(environment):
        selection = search_tile(source, window.geobox, period, bands, tile=str(window.tile))
        if selection.empty:
            empty = np.zeros((0, len(bands), len(window.points)), np.float32)
            return empty, np.zeros((0, len(window.points)), bool), np.array([], "datetime64[us]"), set()
        with report_read_failures():
            loaded = load_selection(
                selection, window.geobox, bands, environment.gdal, chunk_rows=READ_ROWS, reader=environment.reader
            )
            cube = preprocess(loaded, selection.scenes, bands, core=window.geobox)
            at = {"y": xr.DataArray(window.rows, dims="point"), "x": xr.DataArray(window.cols, dims="point")}
            picked = cube.isel(at).compute()
    values = picked.reflectance.transpose("time", "band", "point").values.astype(np.float32)
    valid = picked.valid.transpose("time", "point").values.astype(bool)
    return values, valid, picked.time.values, {info.item_id for info in selection.scenes}


def month_index(times: NDArray[np.datetime64], months: NDArray[np.datetime64]) -> IntArray:
    """Each frame's month as an index into `months`."""
    index: IntArray = np.searchsorted(months, times.astype("datetime64[M]")).astype(np.int64)
    assert np.array_equal(months[index], times.astype("datetime64[M]"))  # the search kept the period's frames
    return index


def mean_features(
    values: FloatArray, valid: NDArray[np.bool_], months: IntArray, n_months: int
) -> tuple[FloatArray, FloatArray]:
    """Per point (rows), each band's mean over the valid frames (point, band), and each band's mean
    per month (point, band * n_months: band by band, months in order), a month without a valid
    frame taking the band's mean over every month. `values` is (time, band, point), `valid`
    (time, point), `months` each frame's month index; NaN where a point has no valid frame."""
    annual = _masked_mean(values, valid)
    by_month = np.stack([_masked_mean(values, valid & (months == m)[:, None]) for m in range(n_months)], axis=-1)
    filled = np.where(np.isnan(by_month), annual[..., None], by_month)
    n_bands, n_points = annual.shape
    monthly: FloatArray = filled.transpose(1, 0, 2).reshape(n_points, n_bands * n_months)
    return annual.T, monthly


def _masked_mean(values: FloatArray, valid: NDArray[np.bool_]) -> FloatArray:
    """(band, point) mean of `values` over the frames where `valid`; NaN where there is none."""
    counts = valid.sum(axis=0)
    sums = np.where(valid[:, None, :], values, 0.0).sum(axis=0, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean: FloatArray = (sums / counts).astype(np.float32)
    return mean
