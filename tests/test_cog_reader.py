"""The reader driver that keeps a task's COGs open (cog_reader.py) against odc-stac's own reader."""

from __future__ import annotations

import gc
import pickle
import warnings
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import dask
import numpy as np
import pytest
import rasterio
import xarray as xr
from odc.geo.geobox import GeoBox
from odc.loader._rio import RioDriver

from aef_pipeline.cog_reader import OpenFileDriver
from aef_pipeline.grid import BBox, tiles_for_bbox
from aef_pipeline.load import ReadFailureWarning, load_selection, report_read_failures
from aef_pipeline.plan import Period
from aef_pipeline.search import CatalogConfig, SceneSelection, open_source, search_tile
from aef_pipeline.testing import CatalogSpec, SyntheticCatalog, build_catalog, write_static_catalog
from aef_pipeline.testing.scenes import DEFAULT_SITE

BANDS = ("B02", "B03", "B04", "B08", "B11")


def _selection(url: str, collection: str, geobox: GeoBox) -> SceneSelection:
    return search_tile(open_source(CatalogConfig(url, collections=(collection,))), geobox, Period.year(2021), BANDS)


def _href(selection: SceneSelection, index: int, band: str) -> str:
    asset = selection.items[index].assets[dict(selection.scenes[index].asset_keys)[band]]
    return str(asset.get_absolute_href())


def _areas(catalog: SyntheticCatalog) -> Iterator[tuple[str, GeoBox]]:
    """Windows of the tile holding the catalog's site (a test_cube.py layout)."""
    site = DEFAULT_SITE
    half_lat = site.size_m / 2 / 111_320
    half_lon = half_lat / np.cos(np.radians(site.lat))
    (tile,) = tiles_for_bbox(BBox(site.lon - half_lon, site.lat - half_lat, site.lon + half_lon, site.lat + half_lat))
    transform = catalog.scenes[0].transform(10)
    x, y = ~tile.geobox.affine * (transform.c, transform.f)
    row, col = int(y) // 2 * 2, int(x) // 2 * 2
    yield "on the 20 m lattice", tile.geobox[row : row + 200, col : col + 240].pad(8)
    yield "off it (20 m bands warped)", tile.geobox[row + 1 : row + 201, col : col + 240]
    yield "half outside the products", tile.geobox[row - 150 : row + 50, col - 120 : col + 120]


@pytest.mark.parametrize(("chunk_rows", "chunk_frames"), [(None, 1), (64, 1), (64, 3)])
def test_the_open_file_driver_loads_what_odc_stacs_reader_loads(
    stac_api: str, catalog: SyntheticCatalog, chunk_rows: int | None, chunk_frames: int
) -> None:
    """Pixel for pixel, eager and lazy, in the paste path, odc-stac's warp (which the driver hands
    back to odc-stac) and with empty reads."""
    for name, geobox in _areas(catalog):
        selection = _selection(stac_api, catalog.collection_id, geobox)
        theirs = load_selection(selection, geobox, BANDS, chunk_rows=chunk_rows, reader=RioDriver())
        ours = load_selection(selection, geobox, BANDS, chunk_rows=chunk_rows, chunk_frames=chunk_frames)
        xr.testing.assert_identical(ours.compute(), theirs.compute())
        assert int((ours.B04 > 0).sum()) > 1000, name  # the area holds data


def test_a_task_opens_each_file_once(stac_api: str, catalog: SyntheticCatalog, monkeypatch: pytest.MonkeyPatch) -> None:
    """One open per file for a task read in four row blocks, the 20 m bands' blocks included
    (odc-stac's reader opens every file once per chunk)."""
    opened: Counter[str] = Counter()
    original = rasterio.open

    def counting_open(uri: str, *args: object, **kwargs: object) -> object:
        opened[str(uri)] += 1
        return original(uri, *args, **kwargs)

    monkeypatch.setattr(rasterio, "open", counting_open)
    _, geobox = next(_areas(catalog))
    selection = _selection(stac_api, catalog.collection_id, geobox)
    loaded = load_selection(selection, geobox, BANDS, chunk_rows=64)
    with dask.config.set(scheduler="threads", num_workers=4):
        for start in range(0, geobox.shape[0], 64):
            loaded.isel(y=slice(start, start + 64)).compute()
    assert len(opened) == len(selection.items) * (len(BANDS) + 1)
    assert set(opened.values()) == {1}


def test_threads_asking_for_a_file_being_opened_wait_for_that_open(
    stac_api: str, earth_search_catalog: SyntheticCatalog, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Eight threads ask at once for a file whose open is slow: one opens it, all get that handle;
    a file that fails to open is tried once."""
    import time
    from concurrent.futures import ThreadPoolExecutor

    from aef_pipeline import cog_reader

    opened: Counter[str] = Counter()
    original = cog_reader._OpenFile.__init__

    def slow_open(self: cog_reader._OpenFile, uri: str) -> None:
        opened[uri] += 1
        time.sleep(0.2)  # an open over HTTP: a round trip or more
        original(self, uri)

    monkeypatch.setattr(cog_reader._OpenFile, "__init__", slow_open)
    _, geobox = next(_areas(earth_search_catalog))
    href = _href(_selection(stac_api, earth_search_catalog.collection_id, geobox), 0, "B04")
    files = cog_reader.OpenFiles()
    for uri in (href, href + ".missing"):
        with ThreadPoolExecutor(8) as pool:
            got = list(pool.map(files.get, [uri] * 8))
        assert opened[uri] == 1, uri
        assert len(got) == 8
        assert len({id(file) for file in got}) == 1
    assert got == [None] * 8  # the missing file: odc-stac's reader takes over


def test_a_file_that_breaks_mid_task_is_skipped_and_reported(tmp_path: Path) -> None:
    """A file cut short after the task opened it: its later reads fail, odc-stac skips and logs
    them, and the task reports the asset, as with odc-stac's own reader."""
    catalog = build_catalog(tmp_path / "cat", "earth-search", CatalogSpec(years=(2021,), revisit_days=120))
    static = str(write_static_catalog(catalog))
    _, geobox = next(_areas(catalog))
    selection = _selection(static, catalog.collection_id, geobox)
    loaded = load_selection(selection, geobox, BANDS, chunk_rows=64)
    broken = _href(selection, 0, "B04").removeprefix("file://")
    with dask.config.set(scheduler="synchronous"), warnings.catch_warnings():
        warnings.simplefilter("error", ReadFailureWarning)
        first = loaded.isel(y=slice(0, 64)).compute()  # every file opened and read
    assert int((first.B04[0] > 0).sum()) > 0
    with open(broken, "r+b") as file:
        file.truncate(2048)  # the header stays, the pixel blocks go
    with (
        dask.config.set(scheduler="synchronous"),
        pytest.warns(ReadFailureWarning, match=r"B04\.tif"),
        report_read_failures() as failures,
    ):
        rest = loaded.isel(y=slice(64, None)).compute()
    assert len(failures) == 1
    assert int(rest.B04[0].max()) == 0  # masked (nodata), not garbage
    assert int((rest.B03[0] > 0).sum()) > 0  # the product's other bands still read


def test_a_pickled_driver_shares_its_processs_handles(stac_api: str, catalog: SyntheticCatalog) -> None:
    """Graphs sent to worker processes carry the driver and its readers: where the load's files
    are open (this process) they are shared; where they are not (another process, or after the
    load was dropped) it opens its own."""
    driver = OpenFileDriver(max_open=7)
    _, geobox = next(_areas(catalog))
    selection = _selection(stac_api, catalog.collection_id, geobox)
    load_selection(selection, geobox, BANDS, chunk_rows=None, reader=driver)
    assert driver.files._files  # opened during the load
    sent = pickle.dumps(driver)
    assert pickle.loads(sent).files is driver.files
    del driver
    gc.collect()
    arrived = pickle.loads(sent)
    assert arrived.max_open == 7
    assert not arrived.files._files


def test_handles_past_the_bound_are_closed(stac_api: str, catalog: SyntheticCatalog) -> None:
    driver = OpenFileDriver(max_open=3)
    _, geobox = next(_areas(catalog))
    selection = _selection(stac_api, catalog.collection_id, geobox)
    theirs = load_selection(selection, geobox, BANDS, chunk_rows=None, reader=RioDriver())
    ours = load_selection(selection, geobox, BANDS, chunk_rows=None, reader=driver)
    xr.testing.assert_identical(ours, theirs)
    files = list(driver.files._files.values())
    assert len(files) == 3
    assert not any(file.dataset.closed for file in files)
