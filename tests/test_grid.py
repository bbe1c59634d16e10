"""The global tile grid: exact cover, stability, zone and antimeridian crossings, bad bboxes."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from odc.geo.geom import box as geom_box
from pyproj import Transformer

from aef_pipeline.errors import UserInputError
from aef_pipeline.grid import RESOLUTION_M, TILE_PIXELS, BBox, TileId, tiles_for_bbox, zone_tile_extent

TILE_M = TILE_PIXELS * RESOLUTION_M


def _own_tile(lon: float, lat: float) -> TileId:
    """The tile holding a point in its own UTM zone, by plain arithmetic (the reference)."""
    zone = min(int((lon + 180) // 6) + 1, 60)
    hemisphere = "N" if lat >= 0 else "S"
    epsg = (32600 if hemisphere == "N" else 32700) + zone
    x, y = Transformer.from_crs(4326, epsg, always_xy=True).transform(lon, lat)
    return TileId(zone, hemisphere, math.floor(x / TILE_M), math.floor(y / TILE_M))


bboxes = st.tuples(st.floats(-179.5, 179.0), st.floats(-79.0, 83.0), st.floats(0.001, 0.5), st.floats(0.001, 0.5)).map(
    lambda t: BBox(t[0], t[1], min(t[0] + t[2], 180.0), min(t[1] + t[3], 84.0))
)


@settings(max_examples=60, deadline=None)
@given(bbox=bboxes, u=st.floats(0, 1), v=st.floats(0, 1))
def test_every_point_lies_in_exactly_one_returned_tile_core(bbox: BBox, u: float, v: float) -> None:
    lon = bbox.west + u * (bbox.east - bbox.west)
    lat = bbox.south + v * (bbox.north - bbox.south)
    tiles = tiles_for_bbox(bbox)
    own = _own_tile(lon, lat)
    assert own in tiles
    holding = [t for t in tiles if t.zone == own.zone and t.hemisphere == own.hemisphere and _contains(t, lon, lat)]
    assert holding == [own]


def _contains(tile: TileId, lon: float, lat: float) -> bool:
    x, y = Transformer.from_crs(4326, tile.epsg, always_xy=True).transform(lon, lat)
    box = tile.geobox.extent.boundingbox
    return bool(box.left <= x < box.right and box.bottom <= y < box.top)


@settings(max_examples=20, deadline=None)
@given(bbox=bboxes)
def test_tiles_are_stable_sorted_and_all_touch_the_bbox(bbox: BBox) -> None:
    first = tiles_for_bbox(bbox)
    assert first == tiles_for_bbox(bbox) == sorted(first)
    area = geom_box(bbox.west, bbox.south, bbox.east, bbox.north, crs="EPSG:4326")
    for tile in first:
        assert tile.geobox.extent.to_crs("EPSG:4326", resolution=500).buffer(1e-6).intersects(area), str(tile)


def test_tile_geobox_is_on_the_fixed_lattice() -> None:
    tile = tiles_for_bbox(BBox(15.06, 46.19, 15.07, 46.21))[0]
    assert str(tile) == "33N_c026_r0266"
    gbox = tile.geobox
    assert gbox.shape == (TILE_PIXELS, TILE_PIXELS)
    assert gbox.transform.a == RESOLUTION_M
    assert gbox.transform.e == -RESOLUTION_M
    assert gbox.transform.c % TILE_M == 0
    assert gbox.transform.f % TILE_M == 0


def test_bbox_across_a_zone_boundary_has_tiles_in_both_zones() -> None:
    tiles = tiles_for_bbox(BBox(11.95, 46.0, 12.05, 46.05))
    assert {t.zone for t in tiles} == {32, 33}


def test_bbox_across_the_antimeridian() -> None:
    tiles = tiles_for_bbox(BBox(179.95, -17.0, -179.95, -16.95, crosses_antimeridian=True))
    assert {(t.zone, t.hemisphere) for t in tiles} == {(60, "S"), (1, "S")}


def test_bbox_across_the_equator() -> None:
    tiles = tiles_for_bbox(BBox(10.0, -0.01, 10.01, 0.01))
    assert {t.hemisphere for t in tiles} == {"N", "S"}


@pytest.mark.parametrize(
    ("west", "south", "east", "north", "message"),
    [
        (10.0, 46.0, 9.0, 47.0, "west must be less than east"),
        (10.0, 47.0, 11.0, 46.0, "south must be below north"),
        (190.0, 46.0, 191.0, 47.0, "outside -180..180"),
        (10.0, -95.0, 11.0, 47.0, "outside -90..90"),
        (10.0, 84.5, 11.0, 85.0, "the UTM range"),
    ],
)
def test_bad_bbox_is_a_clear_error(west: float, south: float, east: float, north: float, message: str) -> None:
    with pytest.raises(UserInputError, match=message):
        BBox(west, south, east, north)


def test_a_wide_bbox_keeps_the_tiles_under_its_curved_edge() -> None:
    # The south edge of a zone-wide bbox is a parallel, curved in UTM: projected as a chord between
    # its corners (before grid.DENSIFY_DEGREES), the row of tiles under it was lost.
    tiles = {str(tile) for tile in tiles_for_bbox(BBox(6.0, 46.1, 11.99999, 46.6))}
    assert {f"32N_c{col:03d}_r0265" for col in range(17, 35)} <= tiles


@pytest.mark.parametrize("west", [-180.0, 12.0, 174.0])
def test_a_zone_extent_holds_every_tile_of_its_band_and_no_more(west: float) -> None:
    """Zone groups span `zone_tile_extent`: the band's widest tiles (at the equator) and its last
    rows (84 N, 80 S) must reach its edges exactly, or a run there would find no room."""
    east, edge = west + 6.0, 0.001
    corners = {
        "N": [BBox(west, 0.0, west + edge, edge), BBox(east - edge, 0.0, east, edge), BBox(west, 84 - edge, east, 84)],
        "S": [
            BBox(west, -edge, west + edge, 0.0),
            BBox(east - edge, -edge, east, 0.0),
            BBox(west, -80, east, -80 + edge),
        ],
    }
    for hemisphere, boxes in corners.items():
        tiles = [t for b in boxes for t in tiles_for_bbox(b) if t.hemisphere == hemisphere]
        reached = {
            "col_min": min(t.col for t in tiles),
            "col_max": max(t.col for t in tiles),
            "row_min": min(t.row for t in tiles),
            "row_max": max(t.row for t in tiles),
        }
        assert reached == zone_tile_extent(hemisphere), hemisphere
