"""Embedding vectors at labelled points and polygons (`aef-pipeline sample`).

    samples = sample_field(Path("field.zarr"), read_points("labels.geojson"), period="2022")
    samples.table      # GeoDataFrame: the points' columns + zone, period, observations, pixels, A00..A63
    samples.missing    # the points that got no vector, each with the reason (never zeros)

Each point is read in its own zone group, in that group's CRS, and the int8 vectors are
de-quantised with nodata (-128) masked first. Points are grouped by stored chunk (128 x 128 px)
and each chunk is read once, so 100,000 points cost a few hundred chunk reads, not 100,000.
A polygon gets the mean of the valid vectors whose pixel centres it holds, re-normalised to
unit length (the usual way to aggregate embeddings over an area).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import zarr
from numpy.typing import NDArray
from odc.geo.geom import BoundingBox
from pyproj import Transformer
from rasterio.features import geometry_mask
from shapely.geometry import Point
from shapely.geometry.base import BaseGeometry

from aef_pipeline.errors import UserInputError
from aef_pipeline.grid import TILE_PIXELS, utm_zone
from aef_pipeline.plan import Period, period_from_text
from aef_pipeline.store import (
    BANDS,
    CHUNK_PX,
    NODATA_INT8,
    dequantise,
    group_geobox,
    required_zones,
    store_periods,
    written_tiles,
    zone_attrs,
    zones_with,
)

FloatArray = NDArray[np.float32]
POLYGON_SEGMENT_DEGREES = 1e-4  # about 10 m: one pixel
POLYGON_BLOCK_PX = 640  # a polygon is read in blocks of 640 x 640 px (26 MB of int8)


@dataclass
class Samples:
    """The vectors found at the points, and the points that got none."""

    table: gpd.GeoDataFrame
    """One row per point with a vector: the input's columns, `zone`, `period`, `observations`
    (valid frames behind the pixel; for a polygon, their mean), `pixels` (1, or the polygon's valid
    pixels) and the bands A00..A63 as float32."""
    period: Period
    missing: list[dict[str, Any]] = field(default_factory=list)
    """{"index": row of the input, "lon", "lat", "reason"} per point without a vector."""

    def require_some(self, store: Path, source: Path | None = None) -> None:
        """Refuse, in one line, points none of which got a vector (with the first one's reason)."""
        if self.table.empty:
            n, of = len(self.missing), f" of {source}" if source else ""
            raise UserInputError(
                f"none of the {n} points{of} lies on a written pixel of {store} for {self.period.label} "
                f"(e.g. {self.missing[0]['reason']}): give points inside the field"
            )

    def vectors(self) -> FloatArray:
        values: FloatArray = self.table[list(BANDS)].to_numpy(np.float32)
        return values


@dataclass
class _Found:
    """What was read for the input's rows (NaN vectors where nothing was)."""

    vectors: FloatArray
    observations: NDArray[np.float32]
    pixels: NDArray[np.int32]
    zones: NDArray[np.str_]
    reasons: dict[int, str] = field(default_factory=dict)


def sample_field(store: Path, points: gpd.GeoDataFrame, period: Period | str | None = None) -> Samples:
    """The field's vectors at `points` (EPSG:4326, as read_points gives) for one period."""
    chosen = choose_period(store, period)
    if not any(_written(store, zone, chosen) for zone in zones_with(store, chosen)):
        raise UserInputError(
            f"{store} has no finished tile for {chosen.label}: run `aef-pipeline run` over the area first"
        )
    n = len(points)
    found = _Found(
        np.full((n, len(BANDS)), np.nan, np.float32),
        np.zeros(n, np.float32),
        np.zeros(n, np.int32),
        np.full(n, "", dtype="<U3"),
    )
    is_point = np.array([isinstance(g, Point) for g in points.geometry])
    lon = np.array([g.x if p else g.representative_point().x for g, p in zip(points.geometry, is_point, strict=True)])
    lat = np.array([g.y if p else g.representative_point().y for g, p in zip(points.geometry, is_point, strict=True)])
    keys = np.array([_zone_key(x, y) for x, y in zip(lon, lat, strict=True)])
    for zone in sorted(set(keys)):
        rows = np.flatnonzero(keys == zone)
        if zone not in zones_with(store, chosen):
            found.reasons.update({int(r): f"outside the field (zone {zone} holds no {chosen.label})" for r in rows})
            continue
        found.zones[rows] = zone
        point_rows, polygon_rows = rows[is_point[rows]], rows[~is_point[rows]]
        _read_points(store, zone, chosen, point_rows, lon[point_rows], lat[point_rows], found)
        for row in polygon_rows:
            _read_polygon(store, zone, chosen, int(row), points.geometry.iloc[row], found)
    return _samples(points, chosen, found, lon, lat)


def choose_period(store: Path, period: Period | str | None) -> Period:
    """The period asked for (a Period, "2022" or "START/END"), checked against the store; with
    none, the store's only period."""
    held = sorted({p for zone in required_zones(store) for p in store_periods(store, zone)})
    labels = ", ".join(p.label for p in held)
    if period is None:
        if len(held) > 1:
            raise UserInputError(f"{store} holds periods {labels}: pass --period one of them")
        return held[0]
    wanted = period if isinstance(period, Period) else period_from_text(period)
    if wanted not in held:
        raise UserInputError(f"{store} holds no period {wanted.label}; it holds {labels}: pass one of them")
    return wanted


def _zone_key(lon: float, lat: float) -> str:
    return f"{utm_zone(lon):02d}{'N' if lat >= 0 else 'S'}"


def _written(store: Path, zone: str, period: Period) -> set[tuple[int, int]]:
    """(tile row, tile col) indices of the group's tiles recorded for `period`."""
    index = store_periods(store, zone).index(period)
    extent = (zone_attrs(store, zone) or {})["aef:tiles"]
    return {(extent["row_max"] - t.row, t.col - extent["col_min"]) for t in written_tiles(store, zone).get(index, [])}


def _read_points(
    store: Path,
    zone: str,
    period: Period,
    rows: NDArray[np.int64],
    lon: NDArray[np.float64],
    lat: NDArray[np.float64],
    found: _Found,
) -> None:
    """Vectors at points of one zone, each stored chunk read once for all its points."""
    attrs = zone_attrs(store, zone) or {}
    group, index = group_geobox(attrs), store_periods(store, zone).index(period)
    x, y = Transformer.from_crs(4326, attrs["proj:code"], always_xy=True).transform(lon, lat)
    pixel_rows = np.floor((group.affine.f - np.asarray(y)) / -group.affine.e).astype(np.int64)
    pixel_cols = np.floor((np.asarray(x) - group.affine.c) / group.affine.a).astype(np.int64)
    inside = (pixel_rows >= 0) & (pixel_rows < group.shape[0]) & (pixel_cols >= 0) & (pixel_cols < group.shape[1])
    written = _written(store, zone, period)
    tiles = zip(pixel_rows // TILE_PIXELS, pixel_cols // TILE_PIXELS, strict=True)
    recorded = inside & np.array([(int(r), int(c)) in written for r, c in tiles], dtype=bool)
    for row in rows[~inside]:
        found.reasons[int(row)] = "outside the field (beyond its zone group)"
    for row in rows[inside & ~recorded]:
        found.reasons[int(row)] = f"outside the field (its tile has no finished {period.label})"
    targets, r, c = rows[recorded], pixel_rows[recorded], pixel_cols[recorded]
    embedding = zarr.open_array(str(store / zone / "embedding"), mode="r")
    observations = zarr.open_array(str(store / zone / "observations"), mode="r")
    chunks = (r // CHUNK_PX) * (group.shape[1] // CHUNK_PX + 1) + c // CHUNK_PX
    order = np.argsort(chunks, kind="stable")  # the points of each chunk, found in one sort
    for members in np.split(order, np.flatnonzero(np.diff(chunks[order])) + 1):
        if not members.size:
            continue
        r0, c0 = (r[members[0]] // CHUNK_PX) * CHUNK_PX, (c[members[0]] // CHUNK_PX) * CHUNK_PX
        block = np.asarray(embedding[index, r0 : r0 + CHUNK_PX, c0 : c0 + CHUNK_PX, :])
        counts = np.asarray(observations[index, r0 : r0 + CHUNK_PX, c0 : c0 + CHUNK_PX])
        dr, dc = r[members] - r0, c[members] - c0
        found.vectors[targets[members]] = vectors_as_float(block[dr, dc], attrs["aef:storage"])
        found.observations[targets[members]] = counts[dr, dc]
        found.pixels[targets[members]] = 1


def _read_polygon(store: Path, zone: str, period: Period, row: int, polygon: BaseGeometry, found: _Found) -> None:
    """The mean of the valid vectors whose pixel centres lie in the polygon, re-normalised."""
    attrs = zone_attrs(store, zone) or {}
    group, index = group_geobox(attrs), store_periods(store, zone).index(period)
    # Edges split every ~10 m first: a polygon's edges are straight in lon/lat, curved in UTM.
    dense = polygon.segmentize(max_segment_length=POLYGON_SEGMENT_DEGREES)
    shape = gpd.GeoSeries([dense], crs="EPSG:4326").to_crs(attrs["proj:code"]).iloc[0]
    left, bottom, right, top = shape.bounds
    window = group.enclosing(BoundingBox(left, bottom, right, top, crs=attrs["proj:code"]))
    roi = group.overlap_roi(window)
    rows, cols = slice(roi[0].start, roi[0].stop), slice(roi[1].start, roi[1].stop)
    if rows.stop <= rows.start or cols.stop <= cols.start:
        found.reasons[row] = "outside the field (beyond its zone group)"
        return
    embedding = zarr.open_array(str(store / zone / "embedding"), mode="r")
    observations = zarr.open_array(str(store / zone / "observations"), mode="r")
    total, counted, pixels = np.zeros(len(BANDS), np.float64), 0.0, 0
    # Block by block (at most POLYGON_BLOCK_PX square), so a polygon of tens of km costs a block's memory.
    for r0 in range(rows.start, rows.stop, POLYGON_BLOCK_PX):
        for c0 in range(cols.start, cols.stop, POLYGON_BLOCK_PX):
            block_rows = slice(r0, min(r0 + POLYGON_BLOCK_PX, rows.stop))
            block_cols = slice(c0, min(c0 + POLYGON_BLOCK_PX, cols.stop))
            area = group[block_rows, block_cols]
            inside = geometry_mask([shape], out_shape=area.shape, transform=area.affine, invert=True)
            if not inside.any():
                continue
            vectors = vectors_as_float(
                np.asarray(embedding[index, block_rows, block_cols, :])[inside], attrs["aef:storage"]
            )
            counts = np.asarray(observations[index, block_rows, block_cols])[inside]
            valid = np.isfinite(vectors).all(axis=-1) & (counts > 0)
            total += vectors[valid].sum(axis=0, dtype=np.float64)
            counted += float(counts[valid].sum())
            pixels += int(valid.sum())
    if not pixels:
        found.reasons[row] = "no valid observation in the polygon (nodata or not written)"
        return
    found.vectors[row] = (total / np.linalg.norm(total)).astype(np.float32)  # the mean's direction
    found.observations[row] = counted / pixels
    found.pixels[row] = pixels


def vectors_as_float(values: np.ndarray, storage: str) -> FloatArray:
    """De-quantised vectors; a vector with any nodata band is NaN as a whole."""
    if storage == "int8":
        floats = dequantise(values)
        floats[(values == NODATA_INT8).any(axis=-1)] = np.nan
        return floats
    result: FloatArray = values.astype(np.float32)
    result[np.isnan(result).any(axis=-1)] = np.nan
    return result


def _samples(points: gpd.GeoDataFrame, period: Period, found: _Found, lon: np.ndarray, lat: np.ndarray) -> Samples:
    nodata = ~np.isfinite(found.vectors).all(axis=1) | (found.observations <= 0)
    for row in np.flatnonzero(nodata):
        found.reasons.setdefault(int(row), "no valid observation at the point (nodata)")
    good = np.array([i not in found.reasons for i in range(len(points))], dtype=bool)
    table = points.iloc[good].copy()
    table["zone"] = found.zones[good]
    table["period"] = period.label
    table["observations"] = found.observations[good]
    table["pixels"] = found.pixels[good]
    bands = {name: found.vectors[good, i] for i, name in enumerate(BANDS)}
    table = gpd.GeoDataFrame(table.assign(**bands), geometry=table.geometry.name, crs=points.crs)
    missing = [
        {"index": int(i), "lon": float(lon[i]), "lat": float(lat[i]), "reason": reason}
        for i, reason in sorted(found.reasons.items())
    ]
    return Samples(table, period, missing)
