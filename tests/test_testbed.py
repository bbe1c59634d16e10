"""The synthetic test bed: pixels with meaning, hard cases present, served by a real STAC API."""

from __future__ import annotations

import dataclasses
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
from aef_pipeline.cli import demo, main
from aef_pipeline.testing import (
    DEFAULT_SITE,
    WORLD_KINDS,
    CatalogSpec,
    LabelledCover,
    LabelledWorld,
    LandCover,
    Landscape,
    Site,
    SyntheticCatalog,
    TruthPoint,
    World,
    build_catalog,
    count_by_class,
    covering_tiles,
    footprint,
    mgrs_tile_at,
    render_scene,
    serve_catalogs,
    truth_points,
    write_static_catalog,
    write_truth,
)
from aef_pipeline.testing.scenes import Scene, plan_scenes
from aef_pipeline.testing.world import FloatArray, parcel_index

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


# --- The plain world is unchanged; the labelled world and its ground truth -------------------------

# Reflectance of World() computed before the labelled world was added: one point in a parcel of each
# LandCover class (WATER ... BARE), bands B04, B08, B11, on three dates.
_PINNED_LON = np.array([15.04148, 15.04148, 15.04148, 15.04548, 15.04148])
_PINNED_LAT = np.array([46.21383, 46.20183, 46.18983, 46.21083, 46.19583])
_PINNED = {
    dt.datetime(2021, 4, 20): [
        [0.030669362990180506, 0.04459438280213277, 0.1841645372332641, 0.04902490138756786, 0.18498647761826983],
        [0.015334681495090253, 0.28581612759184466, 0.27735872720246835, 0.4100518952920387, 0.22393099922211612],
        [0.008178496797381469, 0.1634882017356711, 0.33807130849638173, 0.22192899650418615, 0.2628755208259624],
    ],
    dt.datetime(2021, 7, 15): [
        [0.030669362990180506, 0.020581179440045946, 0.030889982311292696, 0.17681523425238568, 0.18498647761826983],
        [0.015334681495090253, 0.28731695280197506, 0.45106988944736925, 0.26522285137857854, 0.22393099922211612],
        [0.008178496797381469, 0.13347169753306257, 0.21545166455880457, 0.32416126279604046, 0.2628755208259624],
    ],
    dt.datetime(2021, 11, 2): [
        [0.030669362990180506, 0.051306780474798884, 0.18458678584816493, 0.16424170648332714, 0.18498647761826983],
        [0.015334681495090253, 0.285396602737303, 0.2768801787722474, 0.27947284951684487, 0.22393099922211612],
        [0.008178496797381469, 0.17187869882650372, 0.3384091073883024, 0.31410244058079356, 0.2628755208259624],
    ],
}
_BANDS = {name: s2.S2_BANDS.index(s2.BAND_BY_NAME[name]) for name in ("B04", "B08", "B11")}
# One year with a long revisit keeps catalogs of the labelled world quick to plan and render.
_SMALL = CatalogSpec(years=(2022,), revisit_days=60)


def test_plain_world_reflectance_is_unchanged() -> None:
    world = World()
    np.testing.assert_array_equal(world.land_cover(_PINNED_LON, _PINNED_LAT), [0, 1, 2, 3, 4])
    for when, expected in _PINNED.items():
        got = world.reflectance(_PINNED_LON, _PINNED_LAT, when)[list(_BANDS.values())]
        np.testing.assert_allclose(got, expected, rtol=1e-12, atol=0)


def test_catalog_spec_chooses_the_world() -> None:
    assert isinstance(plan_scenes(_SMALL, False)[0].world, World)
    labelled = plan_scenes(dataclasses.replace(_SMALL, world="labelled", seed=2), False)
    assert all(scene.world == LabelledWorld(seed=2) for scene in labelled)
    with pytest.raises(ValueError, match="unknown world 'hilly': choose one of plain, labelled"):
        plan_scenes(CatalogSpec(world="hilly"), False)


def _parcel_centres(world: Landscape, span: int = 40) -> tuple[FloatArray, FloatArray]:
    """Centres of a span x span block of parcels around the default site."""
    cols = np.floor(DEFAULT_SITE.lon / world.parcel_deg[0]) + np.arange(-span // 2, span // 2)
    rows = np.floor(DEFAULT_SITE.lat / world.parcel_deg[1]) + np.arange(-span // 2, span // 2)
    col, row = np.meshgrid(cols, rows)
    return ((col + 0.5) * world.parcel_deg[0]).ravel(), ((row + 0.5) * world.parcel_deg[1]).ravel()


def _parcel_grid(world: Landscape, cls: int, n: int = 200) -> tuple[FloatArray, FloatArray]:
    """An n x n grid of cell centres covering the first parcel of class `cls` near the site."""
    lon, lat = _parcel_centres(world)
    i = int(np.flatnonzero(world.land_cover(lon, lat) == cls)[0])
    west, south = lon[i] - world.parcel_deg[0] / 2, lat[i] - world.parcel_deg[1] / 2
    steps = (np.arange(n) + 0.5) / n
    grid_lon, grid_lat = np.meshgrid(west + steps * world.parcel_deg[0], south + steps * world.parcel_deg[1])
    return grid_lon, grid_lat


def _ndvi(refl: FloatArray) -> FloatArray:
    nir, red = refl[_BANDS["B08"]], refl[_BANDS["B04"]]
    ndvi: FloatArray = (nir - red) / (nir + red)
    return ndvi


def test_early_and_late_crops_differ_only_in_time() -> None:
    world = LabelledWorld()
    lon, lat = _parcel_grid(world, LabelledCover.EARLY_CROP, n=5)
    lag = dt.timedelta(days=49)
    dates = [dt.datetime(2022, 3, 1) + dt.timedelta(days=15 * i) for i in range(12)]
    for when in dates:
        early = world.class_reflectance(LabelledCover.EARLY_CROP, lon, lat, when)
        late_later = world.class_reflectance(LabelledCover.LATE_CROP, lon, lat, when + lag)
        np.testing.assert_allclose(early, late_later, rtol=1e-12)  # same greenness, same spectrum
    early_ndvi = [_ndvi(world.class_reflectance(LabelledCover.EARLY_CROP, lon, lat, d)).mean() for d in dates]
    late_ndvi = [_ndvi(world.class_reflectance(LabelledCover.LATE_CROP, lon, lat, d)).mean() for d in dates]
    assert max(abs(a - b) for a, b in zip(early_ndvi, late_ndvi, strict=True)) > 0.3
    assert np.argmax(late_ndvi) - np.argmax(early_ndvi) in (3, 4)  # peaks 6-8 weeks apart


def test_orchard_and_meadow_share_their_mean_spectrum_but_not_their_texture() -> None:
    world = LabelledWorld()
    lon, lat = _parcel_grid(world, LabelledCover.ORCHARD)
    for month in (1, 4, 6, 8, 10):
        when = dt.datetime(2022, month, 10)
        orchard = world.class_reflectance(LabelledCover.ORCHARD, lon, lat, when)
        meadow = world.class_reflectance(LabelledCover.MEADOW, lon, lat, when)
        np.testing.assert_allclose(orchard.mean(axis=(1, 2)), meadow.mean(axis=(1, 2)), rtol=1e-3)
        assert np.abs(orchard - meadow).max() > 0.02
        # Orchard rows run north-south: columns are uniform, rows vary; the meadow varies both ways.
        swir_orchard, swir_meadow = orchard[_BANDS["B11"]], meadow[_BANDS["B11"]]
        assert swir_orchard.std(axis=0).max() < 1e-9
        assert swir_orchard.std(axis=1).min() > 0.002
        assert swir_meadow.std(axis=0).min() > 0.002
        assert swir_meadow.std() == pytest.approx(swir_orchard.std(), rel=0.05)  # the same per-pixel spread
    riparian = world.class_reflectance(LabelledCover.RIPARIAN_MEADOW, lon, lat, when)
    np.testing.assert_array_equal(riparian, meadow)


def test_riparian_meadows_and_only_they_touch_water() -> None:
    world = LabelledWorld()
    lon, lat = _parcel_centres(world)
    cover = world.land_cover(lon, lat)
    dlon, dlat = world.parcel_deg
    neighbours = [world.land_cover(lon + dx * dlon, lat + dy * dlat) for dx, dy in ((1, 0), (-1, 0), (0, 1), (0, -1))]
    touches_water = np.any([n == LabelledCover.WATER for n in neighbours], axis=0)
    assert touches_water[cover == LabelledCover.RIPARIAN_MEADOW].all()
    assert not touches_water[cover == LabelledCover.MEADOW].any()
    shares = np.bincount(cover, minlength=len(LabelledCover)) / cover.size
    assert shares.min() > 0.07  # every class, riparian meadows included, is common


def test_biomass_shows_in_the_observed_reflectance() -> None:
    world = LabelledWorld(seed=3)
    lon, lat = _parcel_centres(world, span=30)
    cover = world.land_cover(lon, lat)
    biomass = world.biomass(lon, lat)
    assert biomass[np.isin(cover, (LabelledCover.WATER, LabelledCover.BARE))].max() == 0
    assert 80 <= biomass[cover == LabelledCover.FOREST].min() < biomass.max() <= 300
    offsets = np.linspace(-0.3, 0.3, 4)  # a 4 x 4 grid of points inside each parcel
    dx, dy = (a.ravel() for a in np.meshgrid(offsets * world.parcel_deg[0], offsets * world.parcel_deg[1]))
    july = dt.datetime(2022, 7, 20, 10, 0, 13)
    for cls in (LabelledCover.FOREST, LabelledCover.ORCHARD, LabelledCover.MEADOW):
        here = np.flatnonzero(cover == cls)
        points_lon, points_lat = lon[here, None] + dx, lat[here, None] + dy
        np.testing.assert_array_equal(world.biomass(points_lon, points_lat), biomass[here, None] + 0 * dx)
        observed = _ndvi(world.reflectance(points_lon, points_lat, july)).mean(axis=1)
        assert np.corrcoef(observed, biomass[here])[0, 1] > 0.9, cls.name


def test_labelled_noise_is_small_and_new_at_each_acquisition() -> None:
    world = LabelledWorld()
    lon, lat = _parcel_grid(world, LabelledCover.FOREST, n=40)
    first, second = dt.datetime(2022, 6, 1, 10, 0, 13), dt.datetime(2023, 6, 1, 10, 0, 13)  # same day of year
    np.testing.assert_array_equal(world.mean_reflectance(lon, lat, first), world.mean_reflectance(lon, lat, second))
    ratio = world.reflectance(lon, lat, first) / world.reflectance(lon, lat, second)
    assert ratio.std() > 0.01  # uniform in +-3 %: std 1.7 % per acquisition, 2.4 % for a ratio
    assert np.abs(ratio - 1).max() < 0.07
    np.testing.assert_array_equal(world.reflectance(lon, lat, first), world.reflectance(lon, lat, first))


def test_labelled_scene_classes_follow_the_ground() -> None:
    spec = dataclasses.replace(_SMALL, world="labelled", overcast_index=-1, swath_edge_index=-1)
    scene = next(s for s in plan_scenes(spec, False) if s.sensing_time.month == 7)
    scl = render_scene(scene).scl
    cover = scene.world.land_cover(*scene.lonlat(20))
    clear = np.isin(scl, CLEAR)
    expected = {
        LabelledCover.WATER: s2.SCL_WATER,
        LabelledCover.FOREST: s2.SCL_VEGETATION,
        LabelledCover.MEADOW: s2.SCL_VEGETATION,
        LabelledCover.BARE: s2.SCL_NOT_VEGETATED,
    }
    for cls, scl_class in expected.items():
        assert (scl[clear & (cover == cls)] == scl_class).all(), cls.name
    assert clear.mean() > 0.5


@pytest.fixture(scope="module")
def labelled_points() -> list[TruthPoint]:
    return truth_points(CatalogSpec(world="labelled", site=Site(DEFAULT_SITE.lon, DEFAULT_SITE.lat, 3600)))


def test_truth_points_carry_the_world_classes(labelled_points: list[TruthPoint]) -> None:
    world = LabelledWorld()
    lon, lat = np.array([p.lon for p in labelled_points]), np.array([p.lat for p in labelled_points])
    np.testing.assert_array_equal(world.land_cover(lon, lat) + 1, [p.class_id for p in labelled_points])
    assert {(p.class_id, p.class_name) for p in labelled_points} == {
        (c.value + 1, c.name.lower()) for c in LabelledCover
    }
    np.testing.assert_allclose(world.biomass(lon, lat), [p.biomass for p in labelled_points], atol=0.005)
    counts = count_by_class(labelled_points, world.classes)
    assert all(c.train >= 10 and c.test >= 10 for c in counts.values()), counts


def test_truth_points_split_by_parcel(labelled_points: list[TruthPoint]) -> None:
    splits: dict[str, set[str]] = {}
    for point in labelled_points:
        splits.setdefault(point.parcel, set()).add(point.split)
    assert all(len(s) == 1 for s in splits.values())  # no parcel in both splits
    train_parcels = sum(s == {"train"} for s in splits.values())
    assert 0.35 < train_parcels / len(splits) < 0.65


def test_truth_points_keep_away_from_parcel_edges_and_inside_every_scene(
    labelled_points: list[TruthPoint],
) -> None:
    from pyproj import Transformer

    spec = dataclasses.replace(_SMALL, world="labelled", site=Site(DEFAULT_SITE.lon, DEFAULT_SITE.lat, 3600))
    lon, lat = np.array([p.lon for p in labelled_points]), np.array([p.lat for p in labelled_points])
    parcel_deg = LabelledWorld().parcel_deg
    home = parcel_index(lon, lat, parcel_deg)
    for scene in plan_scenes(spec, False)[:2]:  # both MGRS tiles
        x, y = Transformer.from_crs(4326, scene.tile.epsg, always_xy=True).transform(lon, lat)
        x0, y0 = scene.window_origin
        assert np.min([x - x0, x0 + scene.size_m - x, y0 - y, y - (y0 - scene.size_m)]) >= 30
        for dx, dy in ((30, 0), (-30, 0), (0, 30), (0, -30), (21, 21), (-21, 21), (21, -21), (-21, -21)):
            near = Transformer.from_crs(scene.tile.epsg, 4326, always_xy=True).transform(x + dx, y + dy)
            moved = parcel_index(np.asarray(near[0]), np.asarray(near[1]), parcel_deg)
            np.testing.assert_array_equal(moved[0], home[0])
            np.testing.assert_array_equal(moved[1], home[1])


def test_truth_file_is_geojson_that_geopandas_reads(tmp_path: Path, labelled_points: list[TruthPoint]) -> None:
    import geopandas

    path = write_truth(tmp_path, labelled_points)
    assert path == tmp_path / "truth" / "labels.geojson"
    frame = geopandas.read_file(path)
    assert frame.crs.to_epsg() == 4326
    assert len(frame) == len(labelled_points)
    assert {"class", "class_id", "biomass", "split", "parcel"} <= set(frame.columns)
    assert frame.geometry.geom_type.eq("Point").all()
    assert set(frame["split"]) == {"train", "test"}
    assert frame["class_id"].between(1, len(LabelledCover)).all()


def test_plain_world_has_truth_points_too() -> None:
    points = truth_points(CatalogSpec())
    assert {p.class_name for p in points} <= set(World().classes)
    assert {p.class_id for p in points} <= {c.value + 1 for c in LandCover}
    forest = [p.biomass for p in points if p.class_name == "forest"]
    assert set(forest) == {150.0}


def test_demo_catalog_writes_truth_labels(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import geopandas

    target = tmp_path / "demo"
    args = ["demo-catalog", str(target), "--years", "2022", "--site", "-105.0", "40.1", "--size-km", "1.2"]
    assert main(args) == 0
    frame = geopandas.read_file(target / "truth" / "labels.geojson")
    assert set(frame["class"]) <= set(LabelledWorld().classes)
    assert frame.geometry.x.between(-105.01, -104.99).all()
    out = capsys.readouterr().out
    assert f"wrote {len(frame)} truth points of the labelled world" in out
    assert "riparian_meadow" in out
    assert [p.name for p in tmp_path.iterdir()] == ["demo"]


@pytest.mark.parametrize(
    ("flag", "message"),
    [
        (["--site", "15", "85"], "--site latitude 85.0 is outside -80..84"),
        (["--site", "190", "46"], "--site longitude 190.0 is outside -180..180"),
        (["--size-km", "0"], "--size-km 0.0 is outside 0.6-20"),
        (["--size-km", "nan"], "--size-km nan is outside 0.6-20"),
    ],
)
def test_demo_catalog_refuses_a_bad_site(
    flag: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["demo-catalog", str(tmp_path / "x"), *flag]) == 2
    err = capsys.readouterr().err
    assert message in err
    assert err.count("\n") == 1
    assert not (tmp_path / "x").exists()


def test_demo_world_choices_match_the_worlds() -> None:
    assert sorted(demo.WORLDS) == sorted(WORLD_KINDS)
