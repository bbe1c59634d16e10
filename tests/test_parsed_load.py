"""The parse-once load (parsed_load.py) against `odc.stac.load` called as the pipeline called it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import odc.stac
import pystac
import pytest
import xarray as xr
from dask._task_spec import Task, convert_legacy_graph
from odc.geo.geobox import GeoBox, GeoboxTiles
from odc.loader._builder import _dask_open_reader
from odc.loader._rio import RioDriver

from aef_pipeline.cog_reader import OpenFileDriver
from aef_pipeline.load import _STAC_CFG, canonical_item
from aef_pipeline.parsed_load import ParsedItems
from aef_pipeline.providers import SCL
from aef_pipeline.testing import SyntheticCatalog
from tests.test_cog_reader import BANDS, _areas, _selection

OPTIONS: dict[str, Any] = {
    "stac_cfg": _STAC_CFG,
    "resampling": {"*": "bilinear", SCL: "nearest"},
    "fuse_func": None,
    "fail_on_error": False,
}


def test_loads_what_odc_stac_load_loads(stac_api: str, earth_search_catalog: SyntheticCatalog) -> None:
    """Same values, coordinates and attributes on the 10 m and the 20 m grid, from one parse for
    both; every asset's URL patched once. (The reads are the same driver's: the chunks each
    frame reads are compared below, the drivers in test_cog_reader.py.)"""
    chunks: dict[str, int | Literal["auto"]] = {"time": 4, "y": 96, "x": 128}
    catalog = earth_search_catalog  # both providers' items: the binning test below
    _, area = next(_areas(catalog))
    items = _canonical_items(stac_api, catalog, area)
    signed: list[str] = []
    parsed = ParsedItems(items, OpenFileDriver(), patch_url=_recording(signed), **OPTIONS)
    for grid in (area, area.zoom_out(2)):
        theirs = _odc_stac_load(items, grid, chunks, OpenFileDriver())
        ours = parsed(bands=LOADED, geobox=grid, chunks=chunks)
        xr.testing.assert_identical(ours.compute(), theirs.compute())
        # The same reads, without odc-loader's task per (item, band) that makes the reader.
        assert _reader_tasks(theirs) == len(items) * len(LOADED)
        assert _reader_tasks(ours) == 0
    assert len(signed) == len(items) * len(LOADED)


@pytest.mark.parametrize("chunks", [{"time": 3, "y": 64, "x": -1}, {"time": 2, "y": 48, "x": 100}])
def test_bins_frames_into_the_chunks_odc_stac_load_does(
    stac_api: str, catalog: SyntheticCatalog, chunks: dict[str, int | Literal["auto"]]
) -> None:
    """The chunks read for each frame are odc-stac's (the chunks its footprint touches): an area
    half outside the products has empty chunks, and a chunk can hold a footprint's edge."""
    for name, area in _areas(catalog):
        items = _canonical_items(stac_api, catalog, area)
        parsed = ParsedItems(items, RioDriver(), patch_url=None, **OPTIONS)
        for grid in (area, area.zoom_out(2)):
            theirs = _odc_stac_load(items, grid, chunks)
            their_bins = theirs.encoding["debug"].tyx_bins
            assert parsed._bins(GeoboxTiles(grid, _chunk_shape(theirs))) == their_bins, name


def test_an_empty_selection_is_refused() -> None:
    with pytest.raises(ValueError, match="no items"):
        ParsedItems([], RioDriver(), patch_url=None, **OPTIONS)


LOADED = [*BANDS, SCL]


def _canonical_items(stac_api: str, catalog: SyntheticCatalog, area: GeoBox) -> list[pystac.Item]:
    selection = _selection(stac_api, catalog.collection_id, area)
    return [
        canonical_item(item, dict(info.asset_keys))
        for item, info in zip(selection.items, selection.scenes, strict=True)
    ]


def _odc_stac_load(
    items: list[pystac.Item], grid: GeoBox, chunks: dict[str, int | Literal["auto"]], driver: Any = None
) -> xr.Dataset:
    """odc.stac.load as load.py called it before parsed_load.py."""
    return odc.stac.load(
        items, LOADED, groupby="id", preserve_original_order=True, geobox=grid, chunks=chunks,
        driver=driver or RioDriver(), debug=True, **OPTIONS,
    )  # fmt: skip


def _reader_tasks(loaded: xr.Dataset) -> int:
    """The tasks of the load's graph that call odc-loader's `_dask_open_reader`."""
    graph = convert_legacy_graph(dict(loaded.__dask_graph__()))  # type: ignore[no-untyped-call]
    return sum(isinstance(node, Task) and node.func is _dask_open_reader for node in graph.values())


def _recording(seen: list[str]) -> Callable[[str], str]:
    """A URL patch that changes nothing and notes each URL it is given."""

    def patch(url: str) -> str:
        seen.append(url)
        return url

    return patch


def _chunk_shape(loaded: xr.Dataset) -> tuple[int, int]:
    chunks = next(iter(loaded.data_vars.values())).chunks
    assert chunks is not None
    return (chunks[1][0], chunks[2][0])
