"""Scene search through a real local STAC API and a static catalog: selection, duplicates, bad input."""

from __future__ import annotations

import dataclasses
import datetime as dt
import http.server
import re
import threading
from collections.abc import Iterator
from pathlib import Path

import pystac
import pytest

from aef_pipeline.errors import UserInputError
from aef_pipeline.grid import BBox, TileId, tiles_for_bbox
from aef_pipeline.plan import Period
from aef_pipeline.providers import ItemMetadataError, baseline_order
from aef_pipeline.search import (
    CatalogConfig,
    CatalogUnreachableError,
    MixedCollectionsError,
    NoScenesWarning,
    SceneSelection,
    UnknownCollectionError,
    open_source,
    search_tile,
)
from aef_pipeline.testing import SyntheticCatalog, footprint, serve_catalogs, write_static_catalog
from aef_pipeline.testing.scenes import DEFAULT_SITE

BANDS = ("B02", "B03", "B04", "B08", "B11")


def _site_tile() -> TileId:
    site = DEFAULT_SITE
    (tile,) = tiles_for_bbox(BBox(site.lon - 0.001, site.lat - 0.001, site.lon + 0.001, site.lat + 0.001))
    return tile


def _select(
    url: str,
    catalog: SyntheticCatalog,
    year: int = 2021,
    page_size: int = 100,
    max_cloud_cover: float | None = None,
    tile: str | None = None,
) -> SceneSelection:
    source = open_source(CatalogConfig(url, collections=(catalog.collection_id,), page_size=page_size))
    return search_tile(source, _site_tile().load_geobox(), Period.year(year), BANDS, max_cloud_cover, tile=tile)


def test_one_product_per_tile_and_acquisition_highest_baseline_kept(stac_api: str, catalog: SyntheticCatalog) -> None:
    selection = _select(stac_api, catalog)
    area = _site_tile().load_geobox().extent.to_crs("EPSG:4326")
    expected = {
        (scene.tile.name, scene.acquisition.start)
        for scene in catalog.scenes
        if scene.sensing_time.year == 2021 and footprint(scene).intersects(area)
    }
    got = [
        (catalog.scene_of(item.id).tile.name, catalog.scene_of(item.id).acquisition.start) for item in selection.items
    ]
    assert sorted(got) == sorted(expected)
    assert len(got) == len(set(got))
    # The duplicated acquisition: its other baseline was dropped, with a record naming the kept one.
    duplicates = [skip for skip in selection.skipped if skip.reason.startswith("duplicate")]
    assert len(duplicates) == 2  # one per MGRS tile seeing the site
    for skip in duplicates:
        dropped, kept = catalog.scene_of(skip.item_id), catalog.scene_of(str(skip.kept))
        assert dropped.acquisition == kept.acquisition
        assert dropped.tile == kept.tile
        assert baseline_order(kept.processing_baseline) > baseline_order(dropped.processing_baseline)
    times = [str(item.datetime) for item in selection.items]
    assert times == sorted(times)


def test_small_pages_give_the_same_selection(stac_api: str, catalog: SyntheticCatalog) -> None:
    full = _select(stac_api, catalog)
    paged = _select(stac_api, catalog, page_size=4)
    assert [item.id for item in paged.items] == [item.id for item in full.items]


def test_static_catalog_gives_the_same_selection_as_the_api(stac_api: str, catalog: SyntheticCatalog) -> None:
    catalog_json = write_static_catalog(catalog)
    from_api = _select(stac_api, catalog, year=2022)
    from_files = _select(str(catalog_json), catalog, year=2022)
    assert [item.id for item in from_files.items] == [item.id for item in from_api.items]
    assert from_files.scenes == from_api.scenes


def test_cloud_filter_runs_on_the_client(stac_api: str, catalog: SyntheticCatalog) -> None:
    selection = _select(stac_api, catalog, max_cloud_cover=50.0)
    pairs = zip(catalog.items, catalog.scenes, strict=True)
    overcast = {item["id"] for item, scene in pairs if scene.acquisition.sky.overcast}
    cloudy = [skip for skip in selection.skipped if skip.reason.startswith("eo:cloud_cover")]
    assert overcast <= {skip.item_id for skip in cloudy}
    assert not overcast & {item.id for item in selection.items}


def test_an_area_without_scenes_warns_and_gives_an_empty_selection(stac_api: str, catalog: SyntheticCatalog) -> None:
    tile = str(_site_tile())
    with pytest.warns(NoScenesWarning, match=rf"no usable Sentinel-2 product for tile {tile} in 2019 \(0 found"):
        selection = _select(stac_api, catalog, year=2019, tile=tile)
    assert selection.empty
    assert selection.scenes == ()


def test_without_a_tile_name_the_warning_gives_the_area_bounds(stac_api: str, catalog: SyntheticCatalog) -> None:
    with pytest.warns(NoScenesWarning, match=r"for the area lon \S+, lat \S+ in 2019") as caught:
        _select(stac_api, catalog, year=2019)
    (message,) = [str(w.message) for w in caught if issubclass(w.category, NoScenesWarning)]
    bounds = re.search(r"lon (\S+)\.\.(\S+), lat (\S+)\.\.(\S+) in", message)
    assert bounds is not None
    west, east, south, north = map(float, bounds.groups())
    assert west < DEFAULT_SITE.lon < east
    assert south < DEFAULT_SITE.lat < north


def test_unknown_collection_lists_the_available_ones(stac_api: str) -> None:
    expected = r"collection sentinel-2-l1c not found at .*; it has: sentinel-2-c1-l2a, sentinel-2-l2a"
    with pytest.raises(UnknownCollectionError, match=expected):
        open_source(CatalogConfig(stac_api, collections=("sentinel-2-l1c",)))


class _Unavailable(http.server.BaseHTTPRequestHandler):
    hits = 0

    def do_GET(self) -> None:
        type(self).hits += 1
        self.send_response(503)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def unavailable_api() -> Iterator[tuple[str, type[_Unavailable]]]:
    handler = type("Handler", (_Unavailable,), {"hits": 0})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", handler
    server.shutdown()
    server.server_close()


def test_unavailable_api_is_retried_then_named(unavailable_api: tuple[str, type[_Unavailable]]) -> None:
    url, handler = unavailable_api
    with pytest.raises(CatalogUnreachableError, match=f"STAC catalog {url} did not answer after 2 retries"):
        open_source(CatalogConfig(url, retries=2, backoff_s=0.01))
    assert handler.hits == 3


def test_unreachable_url_is_named() -> None:
    url = "http://127.0.0.1:9/v1"  # the discard port: nothing listens
    with pytest.raises(CatalogUnreachableError, match=f"{url} did not answer after 1 retries .*NewConnectionError"):
        open_source(CatalogConfig(url, retries=1, backoff_s=0.01))


def test_bad_search_parameters_are_refused() -> None:
    with pytest.raises(UserInputError, match=r"page size 500 is outside 1\.\.100"):
        CatalogConfig(page_size=500)
    with pytest.raises(UserInputError, match="no collection given"):
        CatalogConfig(collections=())
    with pytest.raises(UserInputError, match="max cloud cover 120 is not a percentage"):
        search_tile(_NoItems(), _site_tile().load_geobox(), Period.year(2021), BANDS, max_cloud_cover=120)


class _NoItems:
    """A SceneSource fake: an empty catalog."""

    def find(self, bboxes: object, period: Period) -> list[pystac.Item]:
        return []

    def sample(self) -> list[pystac.Item]:
        return []


def test_legacy_and_c1_earth_search_are_not_mixed(
    tmp_path: Path, earth_search_catalog: SyntheticCatalog, legacy_earth_search_catalog: SyntheticCatalog
) -> None:
    with serve_catalogs([earth_search_catalog, legacy_earth_search_catalog], tmp_path) as url:
        config = CatalogConfig(url, collections=("sentinel-2-c1-l2a", "sentinel-2-l2a"))
        with pytest.raises(MixedCollectionsError, match=r"cannot be mixed: .* search sentinel-2-c1-l2a alone"):
            open_source(config)
        # Each alone is fine.
        for collection in config.collections:
            assert open_source(dataclasses.replace(config, collections=(collection,)))


def test_items_without_crs_are_refused_naming_the_item(tmp_path: Path, earth_search_catalog: SyntheticCatalog) -> None:
    def without_crs(item: dict[str, object]) -> dict[str, object]:
        properties = dict(item["properties"])  # type: ignore[call-overload]
        del properties["proj:epsg"]
        return item | {"properties": properties}

    broken = dataclasses.replace(earth_search_catalog, items=tuple(map(without_crs, earth_search_catalog.items)))
    # Refused when the catalog is opened (its items are sampled), before any tile is searched.
    expected = r"item S2\w+ has no CRS \(proj:code or proj:epsg"
    with serve_catalogs([broken], tmp_path) as url, pytest.raises(ItemMetadataError, match=expected):
        open_source(CatalogConfig(url))


def test_period_interval_is_half_open() -> None:
    period = Period.year(2021)
    assert period.stac_interval() == "2021-01-01T00:00:00.000Z/2021-12-31T23:59:59.999Z"
    assert period.contains(dt.datetime(2021, 12, 31, 23, 59, 59, 999999, tzinfo=dt.UTC))
    assert not period.contains(dt.datetime(2022, 1, 1, tzinfo=dt.UTC))
    assert period.label == "2021"


def test_tiles_across_the_antimeridian_are_searched_on_both_sides() -> None:
    from aef_pipeline.search import _bboxes

    tiles = tiles_for_bbox(BBox(179.95, 65.0, -179.95, 65.05, crosses_antimeridian=True))
    assert {tile.zone for tile in tiles} == {1, 60}
    for tile in tiles:
        area = tile.load_geobox().extent.to_crs("EPSG:4326", resolution=200, wrapdateline=True)
        boxes = _bboxes(area)
        assert len(boxes) == 2
        assert all(-180 <= west < east <= 180 for west, _, east, _ in boxes)
        assert {boxes[0][2], boxes[1][0]} == {180.0, -180.0}
