"""odc-stac's load of one task's products onto several grids, the items parsed once.

A task loads its products onto several grids: the 10 m bands, SCL on the 20 m grid, and each row
block of the 20 m bands with its rim (`load.load_selection`). `odc.stac.load` parses every item
and projects its footprint into the grid's CRS on each call, which made building the graph a
fifth of the loader's wall on the benchmark task (docs/performance.md, figure 2). This does what
`odc.stac.load` does for the one way the pipeline calls it (one frame per item, in the given
order: `groupby="id"`, `preserve_original_order=True`; an explicit geobox), with odc-stac's and
odc-loader's public pieces: `odc.stac.parse_items` once, then per grid the chunk binning and
`odc.loader.chunked_load`. Reading, fusing, nodata and failures stay odc-stac's. The shape of the
fix upstream: `odc.stac.load` accepting parsed items, or a load of one set of items onto many
geoboxes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import numpy as np
import pystac
import shapely
import xarray as xr
from odc.geo.geobox import GeoBox, GeoBoxBase, GeoboxTiles
from odc.loader import chunked_load, resolve_chunk_shape, resolve_load_cfg
from odc.stac import ConversionConfig, ParsedItem, parse_items

from aef_pipeline.cog_reader import OpenFileDriver

# odc-stac's chunk shape for an eager load (odc.stac._stac_load.DEFAULT_CHUNK_FOR_LOAD): how an
# eager load is split for its reader threads.
_EAGER_TILE = 2048


class ParsedItems:
    """The products of one task, parsed once, loadable onto any geobox in their CRS or another.

    Calling it is `odc.stac.load(items, bands=..., geobox=..., chunks=..., groupby="id",
    preserve_original_order=True, ...)` with the options given here."""

    def __init__(
        self,
        items: Sequence[pystac.Item],
        driver: Any,
        *,
        stac_cfg: ConversionConfig,
        resampling: Mapping[str, str],
        fuse_func: str | None,
        fail_on_error: bool,
        patch_url: Callable[[str], str] | None,
    ) -> None:
        if not items:
            raise ValueError("no items to load: a task's selection holds at least one product")
        parsed = list(parse_items(items, cfg=stac_cfg, md_plugin=driver.md_parser))
        self._items = [_patched(item, patch_url) for item in parsed] if patch_url else parsed
        self._driver = driver
        self._resampling = dict(resampling)
        self._fuse_func = fuse_func
        self._fail_on_error = fail_on_error
        self._footprints: dict[str, np.ndarray] = {}

    def __call__(
        self, *, bands: Sequence[str], geobox: GeoBox, chunks: Mapping[str, int | Literal["auto"]] | None
    ) -> xr.Dataset:
        collection = self._items[0].collection
        to_load = collection.resolve_bands(list(bands))
        names = list(to_load)
        load_cfg = resolve_load_cfg(
            to_load,
            self._resampling,
            fail_on_error=self._fail_on_error,
            fuse_func=self._fuse_func,
        )
        meta = collection.meta_for(names)
        frames = len(self._items)
        if chunks is None:
            chunk_shape: tuple[int, ...] = (1, _EAGER_TILE, _EAGER_TILE)
        else:
            chunk_shape = resolve_chunk_shape(frames, geobox, chunks, cfg=load_cfg, extra_dims=meta.extra_dims_full())
        tiles = GeoboxTiles(geobox, (chunk_shape[1], chunk_shape[2]))
        loaded = chunked_load(
            load_cfg,
            meta,
            [item.resolve_bands(names) for item in self._items],
            self._bins(tiles),
            tiles,
            [item.nominal_datetime.replace(tzinfo=None) for item in self._items],
            self._driver.capture_env(),  # the rasterio environment active now, as odc.stac.load
            self._driver,
            chunks=chunks,
        )
        if chunks is None or not isinstance(self._driver, OpenFileDriver):
            return loaded
        return loaded.assign(
            {name: band.copy(data=self._driver.with_readers_made(band.data)) for name, band in loaded.data_vars.items()}
        )

    def _bins(self, tiles: GeoboxTiles) -> dict[tuple[int, int, int], list[int]]:
        """The chunks each frame's item touches, as odc.stac.load bins them (`GeoboxTiles.tiles`:
        the chunks whose extent is not disjoint from the item's footprint), in one vectorised
        test of every footprint against every chunk."""
        footprints = self._footprints_in(tiles.base)
        indices = list(np.ndindex(*tiles.shape.yx))
        extents = [tiles[index].extent.geom for index in indices]  # in the footprints' CRS
        touching = shapely.intersects(footprints[:, None], np.array(extents, dtype=object)[None, :])
        return {(int(frame), *indices[chunk]): [int(frame)] for frame, chunk in zip(*np.nonzero(touching), strict=True)}

    def _footprints_in(self, geobox: GeoBoxBase) -> np.ndarray:
        """Every item's footprint (shapely) in the geobox's CRS, projected once per CRS (a task's grids
        share one)."""
        key = str(geobox.crs)  # hashing a CRS writes out its WKT each time; its name is enough here
        if key not in self._footprints:
            footprints = [item.safe_geometry(geobox.crs) for item in self._items]
            if any(footprint is None for footprint in footprints):
                raise ValueError("a STAC item has no footprint (geometry): it cannot be placed on the grid")
            self._footprints[key] = np.array(
                [footprint.geom for footprint in footprints if footprint is not None], dtype=object
            )
        return self._footprints[key]


def _patched(item: ParsedItem, patch_url: Callable[[str], str]) -> ParsedItem:
    """The item with `patch_url` applied to every band's URL (odc.stac.load's `patch_url`)."""
    bands = {key: dataclasses.replace(src, uri=patch_url(src.uri)) for key, src in item.bands.items()}
    return dataclasses.replace(item, bands=bands)
