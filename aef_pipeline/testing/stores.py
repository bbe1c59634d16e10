"""Comparing two embedding stores (tests and benchmarks): the same tile-periods, the same bits.

Zone groups span a whole zone, so stores are compared tile-period by tile-period over what
their records say was written, never as whole arrays (one period of one zone is 3.75 TiB).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import zarr

from aef_pipeline.grid import TileId
from aef_pipeline.plan import Period
from aef_pipeline.store import (
    StoreLayout,
    tile_region,
    written_tiles,
    zone_attrs,
    zone_encoding,
    zone_name,
    zone_template,
    zones_in,
)


def assert_same_stores(one: Path, two: Path) -> None:
    """Both stores hold the same zones and written tile-periods, with equal stored values."""
    assert zones_in(one) == zones_in(two), f"zones {zones_in(one)} != {zones_in(two)}"
    assert zones_in(one), f"{one} holds no zone group"
    for zone in zones_in(one):
        written = written_tiles(one, zone)
        assert written == written_tiles(two, zone), f"{zone}: different tile-periods written"
        extents = [(zone_attrs(store, zone) or {})["aef:tiles"] for store in (one, two)]
        for index, tiles in written.items():
            for tile in tiles:
                for name in ("embedding", "observations"):
                    a, b = (
                        np.asarray(zarr.open_array(str(store / zone / name), mode="r")[(index, *tile_region(tile, e))])
                        for store, e in zip((one, two), extents, strict=True)
                    )
                    assert a.dtype == b.dtype, f"{tile} {name}: {a.dtype} != {b.dtype}"
                    if not np.array_equal(a, b):  # the fast check; the assertion then says where they differ
                        np.testing.assert_array_equal(a, b, err_msg=f"{tile} period {index} {name}", strict=True)


def older_layout_store(path: Path, tiles: Sequence[TileId], periods: Sequence[Period], layout: StoreLayout) -> None:
    """The template of a store as the bbox-extent layout (before zone-wide groups) made it: one
    group spanning the rectangle of `tiles`, without `aef:layout` or `tile_planned`. For testing
    refusal and `migrate`; its data is written with `write_tile` like any store's."""
    extent = {
        "col_min": min(t.col for t in tiles),
        "col_max": max(t.col for t in tiles),
        "row_min": min(t.row for t in tiles),
        "row_max": max(t.row for t in tiles),
    }
    zone = zone_name(tiles[0])
    template = zone_template(zone, periods, layout, extent).drop_vars("tile_planned")
    del template.attrs["aef:layout"]
    encoding = zone_encoding(layout, zone, extent)
    del encoding["tile_planned"]
    template.to_zarr(path, group=zone, mode="a", compute=False, encoding=encoding, consolidated=False)
