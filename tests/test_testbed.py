"""The synthetic test bed: pixels with meaning, hard cases present, served by a real STAC API."""

from __future__ import annotations

import datetime as dt
import json
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import odc.stac
import pystac
import pytest
from odc.geo.geobox import GeoBox
from odc.geo.geom import box
from pystac_client import Client

from aef_pipeline import sentinel2 as s2
from aef_pipeline.testing import (
    CatalogSpec,
    LandCover,
    SyntheticCatalog,
    build_catalog,
    covering_tiles,
    footprint,
    mgrs_tile_at,
    render_scene,
    serve_catalogs,
    write_static_catalog,
)
from aef_pipeline.testing.scenes import Scene

CLEAR = (s2.SCL_VEGETATION, s2.SCL_NOT_VEGETATED, s2.SCL_WATER)


def _native_geobox(scene: Scene, resolution: int) -> GeoBox:
    return GeoBox(scene.shape(resolution), scene.transform(resolution), f"EPSG:{scene.tile.epsg}")


def test_search_through_local_api_returns_the_items(stac_api: str, catalog: SyntheticCatalog) -> None:
    bbox = [15.062, 46.198, 15.068, 46.202]
    found = Client.open(stac_api).search(
        collections=[catalog.collection_id], bbox=bbox, datetime="2021-03-01/2021-08-31", limit=7
    )
    got = sorted(item.id for item in found.items())
    area = box(bbox[0], bbox[1], bbox[2], bbox[3], crs="EPSG:4326")
    expected = sorted(
        item["id"]
        for item, scene in zip(catalog.items, catalog.scenes, strict=True)
        if dt.datetime(2021, 3, 1) <= scene.sensing_time <= dt.datetime(2021, 8, 31, 23, 59)
        and footprint(scene).intersects(area)
    )
    assert got == expected
    assert len(got) > 7  # more than one page was fetched


def test_odc_stac_load_gives_the_written_pixels(stac_api: str, catalog: SyntheticCatalog) -> None:
    items = list(Client.open(stac_api).search(collections=[catalog.collection_id], max_items=6).items())
    red, scl = (
        catalog.flavor.band_key(s2.BAND_BY_NAME["B04"]),
        "scl" if catalog.flavor.name == "earth-search" else "SCL",
    )
    for item in items:
        scene = catalog.scene_of(item.id)
        written = render_scene(scene)
        loaded = odc.stac.load([item], bands=[red], geobox=_native_geobox(scene, 10), groupby="id")
        np.testing.assert_array_equal(loaded[red].values[0], written.dn["B04"])
        loaded = odc.stac.load([item], bands=[scl], geobox=_native_geobox(scene, 20), groupby="id")
        np.testing.assert_array_equal(loaded[scl].values[0], written.scl)


def test_boa_offset_present_from_baseline_04_and_absent_before(catalog: SyntheticCatalog) -> None:
    """Clear-sky DNs equal reflectance * 10000, plus 1000 exactly when the baseline is >= 04.00."""
    seen = set()
    for scene in catalog.scenes:
        rendered = render_scene(scene)
        clear = np.isin(rendered.scl, CLEAR) & (scene.acquisition.sky.shadow_density(*scene.lonlat(20)) < 1e-6)
        if clear.sum() < 100:
            continue
        truth = scene.world.reflectance(*scene.lonlat(20), scene.sensing_time)[
            s2.S2_BANDS.index(s2.BAND_BY_NAME["B11"])
        ]
        excess = rendered.dn["B11"][clear].astype(float) - truth[clear] * 10_000
        expected = 1000 if s2.baseline_has_offset(scene.processing_baseline) else 0
        assert np.abs(excess - expected).max() <= 0.51, scene.processing_baseline
        seen.add(expected)
    if catalog.flavor.name == "planetary-computer":
        assert seen == {0, 1000}  # both sides of 04.00 are really present
    else:
        assert seen == {1000}  # Earth Search c1 serves the 05.00 reprocessing


@pytest.mark.parametrize(("baseline", "offset"), [("02.12", False), ("03.01", False), ("04.00", True), ("05.11", True)])
def test_baseline_offset_rule(baseline: str, offset: bool) -> None:
    assert s2.baseline_has_offset(baseline) is offset


def test_two_overlapping_mgrs_tiles_see_the_same_ground(catalog: SyntheticCatalog) -> None:
    tiles = {scene.tile.name for scene in catalog.scenes}
    assert tiles == {"33TVM", "33TWM"}
    west, east = (s for s in catalog.scenes[:2])
    assert west.acquisition is east.acquisition
    assert west.tile != east.tile
    assert footprint(west).intersection(footprint(east)).area > 0.9 * footprint(west).area


def test_duplicate_acquisition_with_two_baselines(catalog: SyntheticCatalog) -> None:
    by_datatake: dict[tuple[str, str], list[str]] = {}
    for item in catalog.items:
        props = item["properties"]
        stem = props["s2:datatake_id"].rsplit("_N", 1)[0]
        tile = props.get("grid:code") or props["s2:mgrs_tile"]
        by_datatake.setdefault((tile, stem), []).append(props["s2:processing_baseline"])
    duplicates = {key: v for key, v in by_datatake.items() if len(v) > 1}
    assert len(duplicates) == 2  # one acquisition, seen by both tiles
    for baselines in duplicates.values():
        assert len(set(baselines)) == 2
    assert len({item["id"] for item in catalog.items}) == len(catalog.items)


def test_fully_cloudy_scene(catalog: SyntheticCatalog) -> None:
    overcast = [item for item in catalog.items if item["properties"]["eo:cloud_cover"] == 100]
    assert len(overcast) == 2
    scene = catalog.scene_of(overcast[0]["id"])
    scl = render_scene(scene).scl
    assert np.isin(scl, (s2.SCL_CLOUD_MEDIUM, s2.SCL_CLOUD_HIGH, s2.SCL_THIN_CIRRUS)).all()


def test_partial_scene_has_nodata_and_a_smaller_footprint(catalog: SyntheticCatalog) -> None:
    partial = [s for s in catalog.scenes if s.acquisition.swath is not None]
    assert len(partial) == 2
    rendered = render_scene(partial[0])
    nodata = rendered.dn["B11"] == 0
    assert 0.2 < nodata.mean() < 0.8
    np.testing.assert_array_equal(rendered.scl == s2.SCL_NODATA, nodata)  # same 20 m grid
    assert 0.2 < (rendered.dn["B04"] == 0).mean() < 0.8
    full = next(s for s in catalog.scenes if s.acquisition.swath is None and s.tile == partial[0].tile)
    assert footprint(partial[0]).area < 0.8 * footprint(full).area


def test_clouds_and_shadows_carry_matching_scl(catalog: SyntheticCatalog) -> None:
    classes: set[int] = set()
    for scene in catalog.scenes:
        rendered = render_scene(scene)
        classes |= set(np.unique(rendered.scl).tolist())
        cloudy = np.isin(rendered.scl, (s2.SCL_CLOUD_HIGH,))
        if cloudy.any():  # opaque cloud is bright in the blue band
            assert rendered.reflectance[20][1][cloudy].min() > 0.4
    assert {s2.SCL_CLOUD_SHADOW, s2.SCL_CLOUD_HIGH, s2.SCL_CLOUD_MEDIUM, s2.SCL_VEGETATION, s2.SCL_WATER} <= classes


def test_land_cover_classes_have_distinct_seasonal_spectra(catalog: SyntheticCatalog) -> None:
    scene = catalog.scenes[0]
    lon, lat = scene.lonlat(10)
    cover = scene.world.land_cover(lon, lat)
    assert set(np.unique(cover).tolist()) == {c.value for c in LandCover}
    nir = s2.S2_BANDS.index(s2.BAND_BY_NAME["B08"])
    red = s2.S2_BANDS.index(s2.BAND_BY_NAME["B04"])

    def ndvi(when: dt.datetime, cls: LandCover) -> float:
        refl = scene.world.reflectance(lon, lat, when)[:, cover == cls].mean(axis=1)
        return float((refl[nir] - refl[red]) / (refl[nir] + refl[red]))

    july, october = dt.datetime(2021, 7, 15), dt.datetime(2021, 10, 15)
    assert ndvi(july, LandCover.SUMMER_CROP) > 0.6 > 0.25 > ndvi(october, LandCover.SUMMER_CROP)
    assert ndvi(july, LandCover.FOREST) > 0.6
    assert ndvi(october, LandCover.FOREST) > 0.6
    assert ndvi(july, LandCover.WATER) < 0


def test_catalog_is_deterministic_from_its_seed(tmp_path: Path) -> None:
    spec = CatalogSpec(years=(2021,), revisit_days=120)
    a = build_catalog(tmp_path / "a", "earth-search", spec)
    b = build_catalog(tmp_path / "b", "earth-search", spec)
    c = build_catalog(tmp_path / "c", "earth-search", CatalogSpec(years=(2021,), revisit_days=120, seed=1))
    assert _without_paths(a) == _without_paths(b) != _without_paths(c)
    for item_a, item_b in zip(a.items, b.items, strict=True):
        assert item_a["assets"]["red"]["file:checksum"] == item_b["assets"]["red"]["file:checksum"]


def _without_paths(catalog: SyntheticCatalog) -> str:
    return json.dumps([{**item, "assets": None, "links": None} for item in catalog.items])


def test_static_catalog_walks_with_pystac_and_loads(earth_search_catalog: SyntheticCatalog) -> None:
    catalog_json = write_static_catalog(earth_search_catalog)
    items = list(pystac.Catalog.from_file(str(catalog_json)).get_items(recursive=True))
    assert len(items) == len(earth_search_catalog.items)
    item = items[0]
    assert item.assets["red"].href == "./B04.tif"  # portable: relative to the item
    item.make_asset_hrefs_absolute()
    scene = earth_search_catalog.scene_of(item.id)
    loaded = odc.stac.load([item], bands=["red"], geobox=_native_geobox(scene, 10))
    np.testing.assert_array_equal(loaded["red"].values[0], render_scene(scene).dn["B04"])


def test_cogs_are_tiled_compressed_with_nodata_zero(earth_search_catalog: SyntheticCatalog) -> None:
    import rasterio

    item = earth_search_catalog.items[0]
    for key, resolution in (("red", 10), ("swir16", 20), ("coastal", 60), ("scl", 20)):
        with rasterio.open(item["assets"][key]["href"]) as ds:
            assert ds.profile["tiled"]
            assert ds.profile["compress"] == "deflate"
            assert ds.nodata == 0
            assert ds.res == (resolution, resolution)
            assert ds.dtypes[0] == ("uint8" if key == "scl" else "uint16")
            assert ds.crs.to_epsg() == item["properties"]["proj:epsg"]


def test_server_stops_cleanly(tmp_path: Path, earth_search_catalog: SyntheticCatalog) -> None:
    with serve_catalogs([earth_search_catalog], tmp_path) as url, urllib.request.urlopen(f"{url}/collections") as got:
        assert got.status == 200
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"{url}/collections", timeout=1)


@pytest.mark.parametrize(
    ("lon", "lat", "name"),
    [(47.9, 72.9, "38XNF"), (-105.0, 40.1, "13TDE"), (15.6, 47.3, "33TWN"), (15.065, 46.2, "33TWM")],
)
def test_mgrs_tile_names_match_real_tiles(lon: float, lat: float, name: str) -> None:
    assert mgrs_tile_at(lon, lat).name == name


def test_mgrs_tiles_match_real_item_origins(real_examples: Path) -> None:
    """For every real item: our tile of its centre has its name and (within 60 m) its origin."""
    from pyproj import Transformer

    for path in real_examples.glob("*_s2*.json"):
        doc = json.loads(path.read_text())
        for item in doc["features"] if doc["type"] == "FeatureCollection" else [doc]:
            props = item["properties"]
            red = item["assets"].get("red") or item["assets"]["B04"]
            x0, y0 = red["proj:transform"][2], red["proj:transform"][5]
            lon, lat = Transformer.from_crs(props["proj:epsg"], 4326, always_xy=True).transform(
                x0 + 54_900, y0 - 54_900
            )
            tile = mgrs_tile_at(lon, lat, zone=props["proj:epsg"] % 100)
            expected = (props.get("grid:code") or props["s2:mgrs_tile"]).removeprefix("MGRS-").zfill(5)
            assert tile.name == expected, path.name
            assert abs(tile.x0 - x0) <= 60, path.name
            assert abs(tile.y0 - y0) <= 60, path.name


def test_default_site_is_seen_by_exactly_two_tiles() -> None:
    assert [t.name for t in covering_tiles(15.065, 46.2)] == ["33TWM", "33TVM"]
