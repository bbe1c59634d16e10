"""An area of interest of any shape: the polygons of a vector file, and the tiles they meet.

    region = read_region(Path("land.gpkg"))          # GeoJSON, GeoPackage, GeoParquet; any CRS
    for cover in zone_covers(region):                # per UTM zone and hemisphere, no pixels
        cover.cols, cover.rows, cover.bounds         # each tile met, and the region's extent in it

plan.plan_tasks(region, ...) turns the covers into task windows as it does for a bbox: a tile is
planned iff the region meets it in a positive area (exactly, to floating point: no rasterisation),
and its window is the bounding box of (region ∩ tile) rounded out to whole window cores, on the
same lattice as a bbox's. A box-shaped region plans what its bbox plans (tests/test_region.py).

How, at the scale of a global land mask (~400k tiles, ~10 s on 2 cores: docs/performance.md): per
UTM zone and hemisphere, the region is clipped to the zone's band in lon/lat, densified and
projected to the zone's UTM CRS, then cut down a quadtree of tile ranges, every node of a level
in one vectorised GEOS call. A node the region covers whole gives all its tiles whole at once; a
node it misses is dropped; a single tile keeps the exact bounds of its piece. No loop visits tiles
one by one, and no geometry is unioned. Tiles across the band's edge then take in what lies
beyond it (the rim), as a bbox's windows do.

Across the antimeridian: give the area split there, as RFC 7946 GeoJSON and Natural Earth do;
each side then plans the tiles of its own zones. Longitudes beyond +-180 (a polygon drawn from 179
to 181) are refused with a line saying so. Beyond the UTM latitudes (80 S, 84 N: the product has
no polar tiles) the region is cut off, with a `RegionClippedWarning`.
"""

from __future__ import annotations

import functools
import hashlib
import math
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import shapely
from numpy.typing import NDArray
from pyproj import Transformer

from aef_pipeline.errors import AefWarning, UserInputError
from aef_pipeline.grid import DENSIFY_DEGREES, TILE_M, UTM_LATITUDES, BBox, utm_epsg, zone_parts

if TYPE_CHECKING:
    import geopandas as gpd

FORMATS = "GeoJSON, GeoPackage or GeoParquet file of polygons"
# How far (km on the ground) a tile met inside its zone's band can reach beyond the band: its
# diagonal, 27.2 km, with slack for UTM's scale factor (a 19.2 km tile is at most 19.21 km long).
RIM_KM = 30.0
# The fewest km in a degree of latitude (110.57, at the equator); a degree of longitude holds at
# least that times cos(latitude). Both make the rim wider than it needs to be, never narrower.
KM_PER_DEGREE = 110.57
# The rim's width in longitude is set per slice of this many degrees of latitude, by the slice's
# edge nearest a pole: 0.31 degrees up to 30, 0.54 up to 60, 2.6 up to 84 (narrower slices clip the
# large polygons more often, for less rim).
RIM_SLICE_DEGREES = 30.0
# A quadtree node counts as covered whole when the region leaves less than this much of it
# uncovered (square metres): floating-point slack on the area of a clipped rectangle, and far
# below a row of 10 m pixels along a 19.2 km tile edge (192,000 m^2), so no window it decides can
# differ from the exact one.
COVERED_SLACK_M2 = 1.0
# How far (relative) a rectangle clip's piece may reach beyond its input's bounds or area before
# it counts as one of GEOS's failures (_clip_to_rects): rounding, far below a failure's reach.
CLIP_SLACK = 1e-9


class RegionClippedWarning(AefWarning):
    """The region reaches beyond the UTM latitudes: only the part within them is planned."""


@dataclass(frozen=True)
class Region:
    """An area of interest of any shape: the union of polygons in lon/lat (EPSG:4326)."""

    geometry: shapely.MultiPolygon
    """The polygons, within -180..180 and the UTM latitudes, in the file's order; they may
    overlap (the region is their union: planning never needs the union computed)."""
    source: str
    """Where they came from (the file's name), as reports record it."""

    @property
    def bbox(self) -> BBox:
        """The polygons' bounds (-180..180 for a region split at the antimeridian): the bbox a
        request with this region carries."""
        west, south, east, north = self.geometry.bounds
        return BBox(west, south, east, north)

    @functools.cached_property
    def sha256(self) -> str:
        """The identity of the geometry: sha256 of its little-endian WKB."""
        return hashlib.sha256(shapely.to_wkb(self.geometry, byte_order=1)).hexdigest()

    def describe(self) -> dict[str, object]:
        """What a run report and a training set record of the region."""
        return {"source": self.source, "polygons": len(self.geometry.geoms), "sha256": self.sha256}


def read_region(path: Path) -> Region:
    """The polygons of a GeoJSON, GeoPackage or GeoParquet file (any CRS it declares; GeoJSON's
    is EPSG:4326 unless it says otherwise), as a Region. A file with no CRS, no features, features
    without geometry or with points or lines is refused with one line naming the fix; invalid
    polygons (self-intersections) are repaired."""
    if not path.is_file():
        raise UserInputError(f"region file {path} not found: give a {FORMATS}")
    frame = _read_frame(path)
    if frame.empty:
        raise UserInputError(f"{path} holds no features: give a {FORMATS}")
    if frame.crs is None:
        raise UserInputError(f"{path} declares no CRS: write the file with its CRS (e.g. geopandas' set_crs)")
    geometries = np.asarray(frame.geometry.to_crs("EPSG:4326").array, dtype=object)
    _check_polygons(geometries, path)
    return region_of(geometries, path.name)


def region_of(geometries: NDArray[np.object_], source: str) -> Region:
    """The Region of lon/lat polygons (or multipolygons): repaired where invalid, refused beyond
    +-180 degrees of longitude, cut off (with a warning) beyond the UTM latitudes."""
    polygons = _valid(shapely.get_parts(geometries))
    west, south, east, north = shapely.total_bounds(polygons)
    if not (
        np.isfinite([west, south, east, north]).all() and -180 <= west <= east <= 180 and -90 <= south < north <= 90
    ):
        raise UserInputError(
            f"region {source} spans {west:.6g} {south:.6g} {east:.6g} {north:.6g}, not lon/lat within -180..180 and "
            "-90..90: split it at the antimeridian (as RFC 7946 GeoJSON does), or declare the CRS it is in"
        )
    low, high = UTM_LATITUDES
    if south < low or north > high:
        warnings.warn(
            f"region {source} reaches {south:.4g}..{north:.4g} degrees of latitude: only {low:g}..{high:g} (UTM) "
            "is planned",
            RegionClippedWarning,
            stacklevel=2,
        )
        polygons = _polygonal(_clip_to_rects(polygons, -180.0, low, 180.0, high))
    polygons = polygons[shapely.area(polygons) > 0]
    if not polygons.size:
        raise UserInputError(f"region {source} has no area within the UTM latitudes {low:g}..{high:g}")
    return Region(shapely.MultiPolygon(list(polygons)), source)


def _read_frame(path: Path) -> gpd.GeoDataFrame:
    import geopandas as gpd  # here, not at the top: plan.py imports this module, and geopandas is slow to import

    try:
        if path.suffix.lower() in (".parquet", ".geoparquet"):
            return gpd.read_parquet(path)
        return gpd.read_file(path)
    except Exception as error:  # pyogrio and pyarrow raise many types for one cause: unreadable
        reason = str(error).splitlines()[0].split(";")[0] if str(error) else type(error).__name__
        raise UserInputError(f"cannot read a region from {path} ({reason}): give a {FORMATS}") from None


def _check_polygons(geometries: NDArray[np.object_], path: Path) -> None:
    missing = shapely.is_missing(geometries) | shapely.is_empty(geometries)
    if missing.any():
        rows = np.flatnonzero(missing)[:5].tolist()
        raise UserInputError(f"{path}: features {rows} have no geometry: drop them or give their polygons")
    kinds = shapely.get_type_id(geometries)
    other = ~np.isin(kinds, (shapely.GeometryType.POLYGON, shapely.GeometryType.MULTIPOLYGON))
    if other.any():
        rows = np.flatnonzero(other)[:5].tolist()
        kind = shapely.GeometryType(int(kinds[other][0])).name.lower()
        raise UserInputError(
            f"{path}: features {rows} are not polygons (the first is a {kind}): give the area as polygons "
            "(buffer points or lines first)"
        )


def _valid(polygons: NDArray[np.object_]) -> NDArray[np.object_]:
    """The polygons, the invalid ones repaired (GEOS's rectangle clip gives nonsense for those,
    e.g. the whole rectangle). A user's self-intersecting ring is one; so is a sliver narrower
    than the projection's densification error (a polygon that grazes a zone edge by a hair, whose
    long sides were densified differently and cross after projection)."""
    invalid = ~shapely.is_valid(polygons)
    if not invalid.any():
        return polygons
    repaired = polygons.copy()
    repaired[invalid] = shapely.make_valid(polygons[invalid])
    return _polygonal(repaired)


def _polygonal(geometries: NDArray[np.object_]) -> NDArray[np.object_]:
    """The polygons of `geometries` (what make_valid or a clip may leave: collections, lines)."""
    parts = shapely.get_parts(geometries)
    if np.isin(shapely.get_type_id(parts), (shapely.GeometryType.GEOMETRYCOLLECTION,)).any():
        parts = shapely.get_parts(parts)
    return np.asarray(parts[shapely.get_type_id(parts) == shapely.GeometryType.POLYGON], dtype=object)


@dataclass(frozen=True, eq=False)
class ZoneCover:
    """Where a region meets the tiles of one UTM zone and hemisphere: one row per tile, in TileId
    order (column, then row)."""

    zone: int
    hemisphere: str
    cols: NDArray[np.int64]
    rows: NDArray[np.int64]
    """Tile rows, counted northwards (TileId.row)."""
    bounds: NDArray[np.float64]
    """(n, 4) left, bottom, right, top of the region's part of the tile, in the zone's metres."""


def zone_covers(region: Region) -> Iterator[ZoneCover]:
    """The tiles the region meets in a positive area, per UTM zone and hemisphere it reaches, in
    the order of TileId (zone, then N before S).

    As for a bbox (grid.tiles_for_bbox, plan.task_window), a zone's tiles are those its band's
    part of the region meets, and a tile's extent is all of the region inside it: a tile across
    the band's edge (or the equator) also holds what lies beyond, from the band's rim."""
    polygons = np.asarray(region.geometry.geoms, dtype=object)
    extents = shapely.bounds(polygons)
    for zone, hemisphere, zone_box in sorted(zone_parts(region.bbox), key=lambda part: part[:2]):
        epsg, (west, south, east, north) = utm_epsg(zone, hemisphere), zone_box.boundingbox
        band = (west, south, east, north)
        cols, rows, bounds = _cut(polygons, extents, [band], epsg)
        if not cols.size:
            continue
        # The rim only adds to tiles met inside the band: it is cut to their range first.
        met = (cols.min() * TILE_M, rows.min() * TILE_M, (cols.max() + 1) * TILE_M, (rows.max() + 1) * TILE_M)
        rim_cols, rim_rows, rim_bounds = _cut(polygons, extents, _rim(band), epsg, met)
        inside = np.isin(_keys(rim_cols, rim_rows), _keys(cols, rows))
        pieces = (np.concatenate([cols, rim_cols[inside]]), np.concatenate([rows, rim_rows[inside]]))
        yield ZoneCover(zone, hemisphere, *_per_tile(*pieces, np.concatenate([bounds, rim_bounds[inside]])))


Rect = tuple[float, float, float, float]
"""west, south, east, north in degrees."""


def _cut(
    polygons: NDArray[np.object_],
    extents: NDArray[np.float64],
    rects: list[Rect],
    epsg: int,
    within: tuple[float, float, float, float] | None = None,
) -> tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.float64]]:
    """The tiles of the UTM grid `epsg` that the polygons' parts inside `rects` meet, with the
    bounds of their pieces (see _tiles_met); only those `within` (left, bottom, right, top in
    metres) when given."""
    pieces = []
    for west, south, east, north in rects:
        near = (extents[:, 0] < east) & (extents[:, 2] > west) & (extents[:, 1] < north) & (extents[:, 3] > south)
        pieces.append(_polygonal(_clip_to_rects(polygons[near], west, south, east, north)))
    every = np.concatenate(pieces)
    projected = _valid(_to_utm(shapely.segmentize(every[shapely.area(every) > 0], DENSIFY_DEGREES), epsg))
    if within is not None:
        projected = _polygonal(_clip_to_rects(projected, *within))
    return _tiles_met(projected[shapely.area(projected) > 0])


def _rim(band: Rect) -> list[Rect]:
    """The lon/lat rectangles around a zone band that its tiles reach into (RIM_KM), across the
    antimeridian where they pass it (PROJ projects 181 E as -179 E)."""
    west, south, east, north = band
    reach = RIM_KM / KM_PER_DEGREE
    low, high = max(south - reach, UTM_LATITUDES[0]), min(north + reach, UTM_LATITUDES[1])
    around = [(west, low, east, south), (west, north, east, high)]
    for bottom in np.arange(low, high, RIM_SLICE_DEGREES).tolist():
        top = min(bottom + RIM_SLICE_DEGREES, high)
        lon = reach / math.cos(math.radians(max(abs(bottom), abs(top))))
        around += [(west - lon, bottom, west, top), (east, bottom, east + lon, top)]
    wrapped = []
    for w, s, e, n in around:
        wrapped += [(w + 360, s, e + 360, n), (w, s, e, n), (w - 360, s, e - 360, n)]
    return [(max(w, -180.0), s, min(e, 180.0), n) for w, s, e, n in wrapped if min(e, 180.0) > max(w, -180.0) and n > s]


def _per_tile(
    cols: NDArray[np.int64], rows: NDArray[np.int64], bounds: NDArray[np.float64]
) -> tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.float64]]:
    """One row per tile, in (column, row) order, its bounds the union of its pieces' (a tile meets
    several polygons, or the band's part of one and the rim's)."""
    order = np.lexsort((rows, cols))
    cols, rows, bounds = cols[order], rows[order], bounds[order]
    first = np.flatnonzero(np.r_[True, (np.diff(cols) != 0) | (np.diff(rows) != 0)])
    lower, upper = np.minimum.reduceat(bounds[:, :2], first), np.maximum.reduceat(bounds[:, 2:], first)
    return cols[first], rows[first], np.hstack([lower, upper])


def _keys(cols: NDArray[np.int64], rows: NDArray[np.int64]) -> NDArray[np.int64]:
    """One integer per tile of a zone (its rows, rim included, lie well within -5,000..5,000)."""
    return cols * 10_000 + rows


def _to_utm(geometries: NDArray[np.object_], epsg: int) -> NDArray[np.object_]:
    transformer = Transformer.from_crs("EPSG:4326", f"EPSG:{epsg}", always_xy=True)

    def project(coords: NDArray[np.float64]) -> NDArray[np.float64]:
        x, y = transformer.transform(coords[:, 0], coords[:, 1])
        return np.column_stack([x, y])

    return np.asarray(shapely.transform(geometries, project), dtype=object)


def _tiles_met(geometries: NDArray[np.object_]) -> tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.float64]]:
    """The tiles the projected geometries meet, and the bounds of their piece in each: a quadtree
    of tile ranges [c0, c1) x [r0, r1), one level at a time, each level one vectorised clip."""
    if not geometries.size:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, 4))
    extents = shapely.bounds(geometries)
    c0, r0 = np.floor(extents[:, 0] / TILE_M).astype(np.int64), np.floor(extents[:, 1] / TILE_M).astype(np.int64)
    c1 = np.maximum(np.ceil(extents[:, 2] / TILE_M).astype(np.int64), c0 + 1)
    r1 = np.maximum(np.ceil(extents[:, 3] / TILE_M).astype(np.int64), r0 + 1)
    nodes = _Nodes(geometries, c0, c1, r0, r1)
    found: list[tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.float64]]] = []
    while nodes.size:
        pieces = _clip_to_rects(nodes.geometries, *nodes.rect())
        area = shapely.area(pieces)
        met = area > 0
        whole = met & (area >= nodes.area() - COVERED_SLACK_M2)
        found.append(nodes.select(whole).whole_tiles())
        single = met & ~whole & nodes.single()
        found.append((nodes.c0[single], nodes.r0[single], shapely.bounds(pieces[single])))
        nodes = nodes.replace(pieces).select(met & ~whole & ~nodes.single()).children()
    cols, rows, bounds = (np.concatenate(column) for column in zip(*found, strict=True))
    return cols, rows, bounds


def _clip_to_rects(geometries: NDArray[np.object_], *rect: float | NDArray[np.float64]) -> NDArray[np.object_]:
    """Each geometry cut to its rectangle (left, bottom, right, top: numbers or arrays of them).
    GEOS's rectangle clip, 8x faster here than an overlay, through shapely's ufunc (its public
    clip_by_rect takes one rectangle only); where it fails, the exact overlay. It fails on
    degenerate pieces: it raises on a ring collapsed to three points (a polygon that grazes the
    rectangle), and where a polygon crosses an edge by a hair (a vertex 1e-225 degrees beyond 0 E)
    its two crossings can round into the wrong order along the edge, and it closes the piece the
    long way round the rectangle: the whole rectangle, or most of it. A clip is part of its input,
    so a piece that reaches beyond its input's bounds or outgrows its area is such a failure."""
    try:
        clipped = np.asarray(shapely.lib.clip_by_rect(geometries, *rect), dtype=object)
    except shapely.errors.GEOSException:
        return np.asarray(shapely.intersection(geometries, shapely.box(*rect)), dtype=object)
    inner, outer = shapely.bounds(geometries), shapely.bounds(clipped)
    slack = CLIP_SLACK * (1.0 + np.abs(inner))
    beyond = (outer[:, :2] < inner[:, :2] - slack[:, :2]).any(axis=1) | (
        outer[:, 2:] > inner[:, 2:] + slack[:, 2:]
    ).any(axis=1)
    area = shapely.area(geometries)
    failed = beyond | (shapely.area(clipped) > area + CLIP_SLACK * (1.0 + area))
    if failed.any():
        boxes = shapely.box(*(np.broadcast_to(edge, geometries.shape)[failed] for edge in rect))
        clipped[failed] = shapely.intersection(geometries[failed], boxes)
    return clipped


@dataclass(frozen=True, eq=False)
class _Nodes:
    """Quadtree nodes: a geometry each, and the tile range [c0, c1) x [r0, r1) it is cut to."""

    geometries: NDArray[np.object_]
    c0: NDArray[np.int64]
    c1: NDArray[np.int64]
    r0: NDArray[np.int64]
    r1: NDArray[np.int64]

    @property
    def size(self) -> int:
        return int(self.geometries.size)

    def rect(self) -> tuple[NDArray[np.float64], ...]:
        """left, bottom, right, top of each node's range, in metres."""
        return tuple(edge.astype(np.float64) * TILE_M for edge in (self.c0, self.r0, self.c1, self.r1))

    def area(self) -> NDArray[np.float64]:
        return (self.c1 - self.c0) * (self.r1 - self.r0) * float(TILE_M) ** 2

    def single(self) -> NDArray[np.bool_]:
        """Which nodes are one tile."""
        single: NDArray[np.bool_] = (self.c1 - self.c0 == 1) & (self.r1 - self.r0 == 1)
        return single

    def select(self, which: NDArray[np.bool_]) -> _Nodes:
        return _Nodes(self.geometries[which], self.c0[which], self.c1[which], self.r0[which], self.r1[which])

    def replace(self, geometries: NDArray[np.object_]) -> _Nodes:
        return _Nodes(geometries, self.c0, self.c1, self.r0, self.r1)

    def children(self) -> _Nodes:
        """Each node's range halved in both directions (where it is wider than one tile)."""
        cm, rm = (self.c0 + self.c1 + 1) // 2, (self.r0 + self.r1 + 1) // 2
        quarters = [
            (c0, c1, r0, r1) for c0, c1 in ((self.c0, cm), (cm, self.c1)) for r0, r1 in ((self.r0, rm), (rm, self.r1))
        ]
        keep = [(c1 > c0) & (r1 > r0) for c0, c1, r0, r1 in quarters]
        return _Nodes(
            np.concatenate([self.geometries[k] for k in keep]),
            *(np.concatenate([quarter[i][k] for quarter, k in zip(quarters, keep, strict=True)]) for i in range(4)),
        )

    def whole_tiles(self) -> tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.float64]]:
        """Every tile of every node's range, each with its own bounds."""
        widths, heights = self.c1 - self.c0, self.r1 - self.r0
        counts = widths * heights
        node = np.repeat(np.arange(self.size), counts)
        offset = np.arange(int(counts.sum())) - np.repeat(np.cumsum(counts) - counts, counts)
        cols, rows = self.c0[node] + offset % widths[node], self.r0[node] + offset // widths[node]
        bounds = np.column_stack([cols, rows, cols + 1, rows + 1]).astype(np.float64) * TILE_M
        return cols, rows, bounds
