"""The fixed global output grid: square tiles of 10 m pixels per UTM zone and hemisphere.

Pure planning, no I/O. Each (zone, hemisphere) has one odc-geo `GridSpec` anchored at the
projection's origin, so a tile's pixels never depend on the request that produced it: two runs
that touch the same ground write the same pixels of the same tile.
"""

from __future__ import annotations

from dataclasses import dataclass

from odc.geo import XY
from odc.geo.geobox import GeoBox
from odc.geo.geom import Geometry, box
from odc.geo.gridspec import GridSpec

from aef_pipeline.errors import UserInputError

RESOLUTION_M = 10
# Lon/lat outlines are split every DENSIFY_DEGREES (at most 1.1 km; a chord that short strays
# under a metre from the projected curve) before they are projected, so a bbox's edges follow
# their true curves in UTM: odc-geo's `to_crs(resolution=)` is in the source CRS's units, degrees
# here (in metres it split nothing: a 6-degree-wide bbox lost up to 435 px of its projected edge,
# and whole tiles along it).
DENSIFY_DEGREES = 0.01
# Dimensions of every embedding: the published product's 64 bands A00..A63.
EMBEDDING_DIM = 64
# 1920 px = 19.2 km: a whole number of the encoder's 96 px window cores and 128 px windows.
TILE_PIXELS = 1920
TILE_M = TILE_PIXELS * RESOLUTION_M
"""A tile's side in metres: tile column = easting // TILE_M, row = northing // TILE_M."""
# Pixels read around a tile so windows at its edge see their full spatial context: the paper's
# 16 px context of a 96 px core at L = 128. A model spec with a wider context passes its own.
DEFAULT_HALO_PIXELS = 16
# UTM is defined from 80 S to 84 N; polar areas need UPS, which the product does not cover.
UTM_LATITUDES = (-80.0, 84.0)
# The tiles (col_min, col_max, row_min, row_max) of one zone's 6-degree band, the same in every
# zone: the widest columns at the equator, the last rows at 84 N and 80 S (tests/test_grid.py
# checks them with tiles_for_bbox along the band's edges). A zone group of the store spans them.
ZONE_TILES = {"N": (8, 43, 0, 485), "S": (8, 43, 58, 520)}


@dataclass(frozen=True, order=True)
class TileId:
    """A tile of the global grid: stable across runs and readable, e.g. "33N_c026_r0266"."""

    zone: int
    """UTM zone, 1-60."""
    hemisphere: str
    """"N" or "S" (EPSG:326zz or EPSG:327zz)."""
    col: int
    """Tile column: easting // (TILE_PIXELS * RESOLUTION_M)."""
    row: int
    """Tile row: northing // (TILE_PIXELS * RESOLUTION_M), counted northwards."""

    def __str__(self) -> str:
        return f"{self.zone:02d}{self.hemisphere}_c{self.col:03d}_r{self.row:04d}"

    @property
    def epsg(self) -> int:
        return utm_epsg(self.zone, self.hemisphere)

    @property
    def geobox(self) -> GeoBox:
        """The tile's pixels (its core, without any halo)."""
        return zone_grid(self.zone, self.hemisphere).tile_geobox((self.col, self.row))

    def load_geobox(self, halo_px: int = DEFAULT_HALO_PIXELS) -> GeoBox:
        """The grid imagery is loaded onto: the tile padded by `halo_px` pixels on every side,
        pixel-aligned with it (and with the neighbouring tiles)."""
        return self.geobox.pad(halo_px)


@dataclass(frozen=True)
class BBox:
    """A lon/lat area of interest. `west > east` only with `crosses_antimeridian=True`."""

    west: float
    south: float
    east: float
    north: float
    crosses_antimeridian: bool = False

    def __post_init__(self) -> None:
        _check_bbox(self)

    def spans(self) -> list[tuple[float, float]]:
        """(west, east) longitude spans without a wrap: two for a bbox across the antimeridian."""
        if self.crosses_antimeridian:
            return [(self.west, 180.0), (-180.0, self.east)]
        return [(self.west, self.east)]


def utm_zone(lon: float) -> int:
    """The standard UTM zone (1-60) of a longitude; 180 E belongs to zone 60."""
    return min(int((lon + 180.0) // 6) + 1, 60)


def utm_epsg(zone: int, hemisphere: str) -> int:
    """EPSG code of WGS 84 / UTM: 326zz north of the equator, 327zz south of it."""
    return (32600 if hemisphere == "N" else 32700) + zone


def zone_grid(zone: int, hemisphere: str) -> GridSpec:
    """The GridSpec of one UTM zone and hemisphere, anchored at the projection origin (built each
    time: 30 us, not worth a process-wide cache)."""
    crs = f"EPSG:{utm_epsg(zone, hemisphere)}"
    return GridSpec(crs, tile_shape=(TILE_PIXELS, TILE_PIXELS), resolution=RESOLUTION_M, origin=XY(0.0, 0.0))


def zone_tile_extent(hemisphere: str) -> dict[str, int]:
    """Every tile a zone of `hemisphere` can hold, as the store's `aef:tiles` extent."""
    col_min, col_max, row_min, row_max = ZONE_TILES[hemisphere]
    return {"col_min": col_min, "col_max": col_max, "row_min": row_min, "row_max": row_max}


def tiles_for_bbox(bbox: BBox) -> list[TileId]:
    """Every tile whose pixels the bbox touches, in each UTM zone and hemisphere it spans, sorted."""
    found: set[TileId] = set()
    for zone, hemisphere, part in zone_parts(bbox):
        grid = zone_grid(zone, hemisphere)
        projected = part.to_crs(grid.crs, resolution=DENSIFY_DEGREES)
        for (col, row), tile in grid.tiles(projected.boundingbox):
            if tile.extent.intersects(projected):
                found.add(TileId(zone, hemisphere, col, row))
    return sorted(found)


def zone_parts(bbox: BBox) -> list[tuple[int, str, Geometry]]:
    """The bbox cut at UTM zone edges (every 6 degrees) and at the equator."""
    parts = []
    for west, east in bbox.spans():
        first, last = utm_zone(west), utm_zone(min(east, 179.999999))
        for zone in range(first, last + 1):
            lo, hi = max(west, -180.0 + 6 * (zone - 1)), min(east, -180.0 + 6 * zone)
            for hemisphere, south, north in (
                ("S", bbox.south, min(bbox.north, 0.0)),
                ("N", max(bbox.south, 0.0), bbox.north),
            ):
                if hi > lo and north > south:
                    parts.append((zone, hemisphere, box(lo, south, hi, north, crs="EPSG:4326")))
    return parts


def _check_bbox(bbox: BBox) -> None:
    values = f"{bbox.west} {bbox.south} {bbox.east} {bbox.north}"
    for name, value, limit in (
        ("west", bbox.west, 180),
        ("east", bbox.east, 180),
        ("south", bbox.south, 90),
        ("north", bbox.north, 90),
    ):
        if not -limit <= value <= limit:
            raise UserInputError(f"bbox {values}: {name} {value} is outside -{limit}..{limit}; give W S E N in degrees")
    if bbox.south >= bbox.north:
        raise UserInputError(f"bbox {values}: south must be below north; give W S E N")
    if bbox.west >= bbox.east and not bbox.crosses_antimeridian:
        raise UserInputError(
            f"bbox {values}: west must be less than east; for an area across the antimeridian say so explicitly"
        )
    if bbox.south < UTM_LATITUDES[0] or bbox.north > UTM_LATITUDES[1]:
        raise UserInputError(
            f"bbox {values}: latitudes must lie within {UTM_LATITUDES[0]:g}..{UTM_LATITUDES[1]:g} (the UTM range)"
        )
