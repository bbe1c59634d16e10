"""The raw-pixel baseline at points, against the synthetic world and against the pipeline's own cube."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pytest
import xarray as xr
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.typing import NDArray
from odc.geo.geobox import GeoBox
from pyproj import Transformer
from shapely.geometry import Point, box

from aef_pipeline.environment import TaskEnvironment
from aef_pipeline.errors import UserInputError
from aef_pipeline.grid import TILE_PIXELS, TileId, zone_grid
from aef_pipeline.load import load_selection
from aef_pipeline.maps import baseline
from aef_pipeline.maps.baseline import BaselineFeatures, baseline_features, mean_features, period_months, point_windows
from aef_pipeline.plan import Period
from aef_pipeline.preprocess import MaskPolicy, preprocess
from aef_pipeline.search import CatalogConfig, NoScenesWarning, open_source, search_tile
from aef_pipeline.sentinel2 import S2_BANDS
from aef_pipeline.testing import CatalogSpec, Site, SyntheticCatalog, build_catalog, write_static_catalog
from aef_pipeline.testing.scenes import DEFAULT_SITE, Acquisition
from aef_pipeline.testing.truth import away_from_parcel_edges, site_grid
from aef_pipeline.testing.world import observe

# 2021 holds the fully cloudy acquisition (April: no clear observation anywhere), the one whose
# swath edge crosses the site (June) and a product processed twice; August has two acquisitions.
PERIOD = Period.year(2021)
BANDS = ("B02", "B03", "B04", "B08", "B11")
TEN_METRE = ("B02", "B03", "B04", "B08")  # on the MGRS tiles' own 10 m lattice: read without resampling
UTM33 = "EPSG:32633"
# Points this far from the June swath edge see all of a 20 m pixel and its neighbours imaged or
# none of them, so the 10 m truth and the SCL at 20 m agree on whether the point was imaged.
SWATH_MARGIN_M = 60.0


@dataclass(frozen=True)
class Computed:
    """One baseline run over the site's points and a few points around them."""

    features: BaselineFeatures
    lon: NDArray[np.float64]
    lat: NDArray[np.float64]
    site: NDArray[np.int64]
    """Rows of the points inside the imaged site."""
    polygon: int
    """Row of a 4 m square around the first site point's pixel centre."""
    outside: NDArray[np.int64]
    """Rows of points no product images: beside the site in its tile, and in another tile."""
    windows: list[GeoBox]
    """The geoboxes load_selection was called with."""


@pytest.fixture(scope="module")
def config(earth_search_catalog: SyntheticCatalog) -> CatalogConfig:
    return CatalogConfig(str(write_static_catalog(earth_search_catalog)))


@pytest.fixture(scope="module")
def computed(config: CatalogConfig, earth_search_catalog: SyntheticCatalog) -> Computed:
    lon, lat = _site_points(earth_search_catalog)
    x, y = _to_utm(lon[:1], lat[:1])
    centre_x, centre_y = np.floor(x / 10) * 10 + 5, np.floor(y / 10) * 10 + 5
    square = gpd.GeoSeries([box(centre_x[0] - 2, centre_y[0] - 2, centre_x[0] + 2, centre_y[0] + 2)], crs=UTM33)
    beside = (DEFAULT_SITE.lon + 0.03, DEFAULT_SITE.lat)  # 2.3 km east of the site, in its tile
    elsewhere = (15.6, 46.5)  # another tile, where the catalog holds nothing
    geometry = [Point(a, b) for a, b in zip(lon, lat, strict=True)]
    geometry += [square.to_crs("EPSG:4326").iloc[0], Point(*beside), Point(*elsewhere)]
    points = gpd.GeoDataFrame({"label": range(len(geometry))}, geometry=geometry, crs="EPSG:4326")
    windows: list[GeoBox] = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(baseline, "load_selection", _recording(windows))
        with pytest.warns(NoScenesWarning, match="tile 33N_c028_r0268"):  # the point in a tile with nothing
            features = baseline_features(points, PERIOD, config, environment=TaskEnvironment(read_threads=2))
    every = points.geometry.representative_point()
    n = len(lon)
    site, outside = np.arange(n), np.array([n + 1, n + 2])
    return Computed(features, every.x.to_numpy(), every.y.to_numpy(), site, n, outside, windows)


def _site_points(catalog: SyntheticCatalog) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Points of the site away from parcel edges (each 10 m band pixel sees one parcel) and from
    the swath edge."""
    lon, lat = site_grid(DEFAULT_SITE, 350.0)
    world = catalog.scenes[0].world
    keep = away_from_parcel_edges(lon, lat, world.parcel_deg, 30.0)
    for edge in {scene.acquisition.swath for scene in catalog.scenes if scene.acquisition.swath}:
        metres_east = (lon - edge.lon0 - edge.slope * (lat - edge.lat0)) * 111_320 * np.cos(np.radians(lat))
        keep &= np.abs(metres_east) > SWATH_MARGIN_M
    assert keep.sum() >= 8
    return lon[keep], lat[keep]


def _recording(windows: list[GeoBox]) -> Any:
    def recording(selection: Any, geobox: GeoBox, *args: Any, **kwargs: Any) -> xr.Dataset:
        windows.append(geobox)
        return load_selection(selection, geobox, *args, **kwargs)

    return recording


def _to_utm(lon: NDArray[np.float64], lat: NDArray[np.float64]) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    x, y = Transformer.from_crs(4326, UTM33, always_xy=True).transform(lon, lat)
    return np.asarray(x), np.asarray(y)


def _to_lonlat(x: NDArray[np.float64], y: NDArray[np.float64]) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    lon, lat = Transformer.from_crs(UTM33, 4326, always_xy=True).transform(x, y)
    return np.asarray(lon), np.asarray(lat)


def _acquisitions(catalog: SyntheticCatalog) -> list[tuple[dt.datetime, Acquisition]]:
    """Each overpass of the period once (the cube fuses its products), with its sensing time."""
    found = {scene.acquisition.start: (scene.sensing_time, scene.acquisition) for scene in catalog.scenes}
    return [found[start] for start in sorted(found) if PERIOD.contains(found[start][0].replace(tzinfo=dt.UTC))]


def _truth(
    catalog: SyntheticCatalog, lon: NDArray[np.float64], lat: NDArray[np.float64]
) -> tuple[NDArray[np.float64], NDArray[np.bool_], list[dt.datetime]]:
    """What the pipeline must read at the points, from the world alone: the 10 m bands' reflectance
    (time, band, point) at the centre of each point's 10 m pixel as the products quantise it, and
    whether the SCL at the centre of its 20 m pixel (which the mask is made from) is clear.

    The world's reflectance is observed under each acquisition's sky (`observe`): clouds make a
    pixel invalid, but a faint shadow below the SCL's shadow threshold dims a pixel that stays
    valid, so the truth is what the satellite saw there, not the cloud-free ground."""
    x, y = _to_utm(lon, lat)
    lon10, lat10 = _to_lonlat(np.floor(x / 10) * 10 + 5, np.floor(y / 10) * 10 + 5)
    lon20, lat20 = _to_lonlat(np.floor(x / 20) * 20 + 10, np.floor(y / 20) * 20 + 10)
    world, bands = catalog.scenes[0].world, [S2_BANDS.index(b) for b in S2_BANDS if b.name in TEN_METRE]
    invalid = sorted(MaskPolicy().invalid_scl)
    values, valid, times = [], [], []
    for when, acquisition in _acquisitions(catalog):
        reflectance = observe(world, acquisition.sky, acquisition.swath, lon10, lat10, when)[0]
        scl = observe(world, acquisition.sky, acquisition.swath, lon20, lat20, when)[1]
        values.append(np.round(reflectance[bands] * 10_000) / 10_000)  # DN quantisation
        valid.append(~np.isin(scl, invalid))
        times.append(when)
    return np.array(values), np.array(valid), times


def test_annual_means_are_the_observed_world_where_the_mask_is_clear(
    computed: Computed, earth_search_catalog: SyntheticCatalog
) -> None:
    """10 m bands: pixels read as stored (no resampling), so the only error is float32 rounding."""
    site = computed.site
    values, valid, _ = _truth(earth_search_catalog, computed.lon[site], computed.lat[site])
    expected = np.where(valid[:, None, :], values, 0).sum(axis=0) / valid.sum(axis=0)
    got = computed.features.annual[site][:, [BANDS.index(b) for b in TEN_METRE]]
    np.testing.assert_allclose(got, expected.T, rtol=0, atol=2e-6)
    # The mask matters: clouds and the swath edge leave some points fewer dates than others.
    assert len(set(valid.sum(axis=0).tolist())) > 1
    assert valid.sum(axis=0).max() < len(valid)


def test_monthly_means_fill_months_without_an_observation_with_the_annual_mean(
    computed: Computed, earth_search_catalog: SyntheticCatalog
) -> None:
    features, site = computed.features, computed.site
    assert features.names_annual == [f"{band}_mean" for band in BANDS]
    assert features.names_monthly[:13] == [f"B02_2021-{m:02d}" for m in range(1, 13)] + ["B03_2021-01"]
    assert features.monthly.shape == (len(computed.lon), len(BANDS) * 12)
    monthly = features.monthly[site].reshape(len(site), len(BANDS), 12)
    np.testing.assert_array_equal(monthly[:, :, 3], features.annual[site])  # April: overcast
    values, valid, times = _truth(earth_search_catalog, computed.lon[site], computed.lat[site])
    months = np.array([when.month - 1 for when in times])
    ten = [BANDS.index(b) for b in TEN_METRE]
    for month in range(12):
        clear = valid & (months == month)[:, None]
        with np.errstate(invalid="ignore"):
            mean = np.where(clear[:, None, :], values, 0).sum(axis=0) / clear.sum(axis=0)
        expected = np.where(clear.any(axis=0), mean, features.annual[site][:, ten].T)
        np.testing.assert_allclose(monthly[:, ten, month], expected.T, rtol=0, atol=2e-6)


def test_every_band_equals_the_pipeline_cube_of_the_whole_site(
    computed: Computed, config: CatalogConfig, earth_search_catalog: SyntheticCatalog
) -> None:
    """The 20 m band too: the window is on the 20 m lattice, so a pixel's bilinear value does not
    depend on the window it is read in (here the scene's own 240 x 240 px)."""
    scene = earth_search_catalog.scenes[0]
    geobox = GeoBox(scene.shape(10), scene.transform(10), f"EPSG:{scene.tile.epsg}")
    selection = search_tile(open_source(config), geobox, PERIOD, BANDS)
    cube = preprocess(load_selection(selection, geobox, BANDS, chunk_rows=None), selection.scenes, BANDS, geobox)
    x, y = _to_utm(computed.lon[computed.site], computed.lat[computed.site])
    at = {"x": xr.DataArray(x, dims="point"), "y": xr.DataArray(y, dims="point")}
    pixels = cube.reflectance.sel(at, method="nearest").transpose("time", "band", "point").values
    np.testing.assert_allclose(computed.features.annual[computed.site], np.nanmean(pixels, axis=0).T, rtol=1e-6)
    assert computed.features.scenes == len(selection.scenes)


def test_a_polygon_is_read_at_its_representative_point(computed: Computed) -> None:
    features, first = computed.features, computed.site[0]
    np.testing.assert_array_equal(features.annual[computed.polygon], features.annual[first])
    np.testing.assert_array_equal(features.monthly[computed.polygon], features.monthly[first])


def test_points_no_product_images_get_nan_rows_and_are_counted(computed: Computed) -> None:
    features = computed.features
    assert np.isnan(features.annual[computed.outside]).all()
    assert np.isnan(features.monthly[computed.outside]).all()
    assert features.points_without_data == len(computed.outside)
    assert np.isfinite(features.annual[computed.site]).all()
    assert np.isfinite(features.monthly[computed.site]).all()


def test_only_the_window_holding_the_points_is_loaded(computed: Computed) -> None:
    """One window for the site's tile (the tile with nothing is searched, not loaded): the planned
    bounding box of its points, from the site's westernmost point to the point beside it."""
    (window,) = computed.windows
    planned = point_windows(computed.lon, computed.lat)[0]
    assert window == planned.geobox
    assert len(planned.points) == len(computed.site) + 2  # the polygon and the point beside the site
    height, width = window.shape
    assert height <= 250
    assert width <= 250 + 240
    assert height * width < TILE_PIXELS**2 / 30


def test_points_in_two_tiles_are_each_read_in_their_own_tile(tmp_path: Path) -> None:
    site = Site(lon=15.2387, lat=46.2)  # straddles the edge of tile columns 26 and 27 of zone 33
    spec = CatalogSpec(site=site, years=(2022,), revisit_days=120, duplicate_index=-1, swath_edge_index=-1)
    catalog = build_catalog(tmp_path / "cat", "earth-search", spec)
    x, y = _to_utm(np.array([site.lon]), np.array([site.lat]))
    edge = 27 * TILE_PIXELS * 10
    lon, lat = _to_lonlat(np.array([edge - 55.0, edge + 55.0]), np.array([y[0], y[0]]))
    assert abs(x[0] - edge) < 500
    points = gpd.GeoDataFrame(geometry=gpd.points_from_xy(lon, lat), crs="EPSG:4326")
    windows: list[GeoBox] = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(baseline, "load_selection", _recording(windows))
        features = baseline_features(points, Period.year(2022), CatalogConfig(str(write_static_catalog(catalog))))
    assert np.isfinite(features.annual).all()
    assert features.points_without_data == 0
    assert [w.shape for w in windows] == [(2, 2), (2, 2)]
    assert [tile.col for tile in _tiles(lon, lat)] == [26, 27]


def _tiles(lon: NDArray[np.float64], lat: NDArray[np.float64]) -> list[TileId]:
    return [window.tile for window in point_windows(lon, lat)]


@pytest.mark.parametrize(
    ("lon", "lat", "shape"),
    [
        ([15.065], [46.2], (2, 2)),  # one point: its 20 m pixel
        ([15.065, 15.065], [46.2, 46.2], (2, 2)),  # a pixel holds two points
        ([15.065, 15.075], [46.2, 46.19], (112, 80)),  # two points 1.1 km apart: their bounding box
    ],
)
def test_a_window_is_the_points_bounding_box_on_the_20m_lattice(
    lon: list[float], lat: list[float], shape: tuple[int, int]
) -> None:
    (window,) = point_windows(np.array(lon), np.array(lat))
    assert window.geobox.shape == shape
    tile_affine, affine = window.tile.geobox.affine, window.geobox.affine
    assert (affine.c - tile_affine.c) % 20 == 0
    assert (affine.f - tile_affine.f) % 20 == 0
    x, y = _to_utm(np.array(lon), np.array(lat))
    np.testing.assert_array_equal(window.cols, np.floor((x - affine.c) / 10))
    np.testing.assert_array_equal(window.rows, np.floor((affine.f - y) / 10))


@settings(max_examples=60, deadline=None)
@given(
    lon=st.lists(st.floats(-180, 180), min_size=1, max_size=4),
    lat=st.lists(st.floats(-80, 84), min_size=4, max_size=4),
    spread=st.floats(0, 0.3),
)
def test_each_point_lies_in_its_window_pixel_of_its_grid_tile(
    lon: list[float], lat: list[float], spread: float
) -> None:
    """Anywhere on the globe: the window is a piece of the point's tile of zone_grid, on the 20 m
    lattice, and the pixel given for each point is the one whose square holds it."""
    lons = np.clip(np.array(lon) + spread * np.arange(len(lon)), -180, 180)
    lats = np.array(lat[: len(lon)])
    for window in point_windows(lons, lats):
        tile, affine = window.tile, window.geobox.affine
        x, y = Transformer.from_crs(4326, tile.epsg, always_xy=True).transform(lons[window.points], lats[window.points])
        grid = zone_grid(tile.zone, tile.hemisphere)
        for index in (grid.pt2idx(float(a), float(b)) for a, b in zip(x, y, strict=True)):
            assert (index.x, index.y) == (tile.col, tile.row)
        assert (affine.c - tile.geobox.affine.c) % 20 == 0
        assert (affine.f - tile.geobox.affine.f) % 20 == 0
        height, width = window.geobox.shape
        assert ((window.rows >= 0) & (window.rows < height) & (window.cols >= 0) & (window.cols < width)).all()
        centre_x, centre_y = affine.c + 10 * (window.cols + 0.5), affine.f - 10 * (window.rows + 0.5)
        assert (np.abs(np.asarray(x) - centre_x) <= 5 + 1e-6).all()
        assert (np.abs(np.asarray(y) - centre_y) <= 5 + 1e-6).all()


def test_points_across_zones_and_the_equator_get_their_own_tiles() -> None:
    lon, lat = np.array([17.99, 18.01, 18.01]), np.array([1.0, 1.0, -1.0])
    windows = point_windows(lon, lat)
    assert sorted((w.tile.zone, w.tile.hemisphere) for w in windows) == [(33, "N"), (34, "N"), (34, "S")]
    assert all(w.geobox.shape == (2, 2) for w in windows)


def test_mean_features_average_valid_frames_and_fill_empty_months() -> None:
    # Three frames (January, January, March) of one band at two points; February has none.
    values = np.array([[[0.1, 0.5]], [[0.3, np.nan]], [[0.8, 0.7]]], dtype=np.float32)
    valid = np.array([[True, True], [True, False], [False, True]])
    annual, monthly = mean_features(values, valid, np.array([0, 0, 2]), 3)
    np.testing.assert_allclose(annual, [[0.2], [0.6]])
    np.testing.assert_allclose(monthly, [[0.2, 0.2, 0.2], [0.5, 0.6, 0.7]])
    annual, monthly = mean_features(values[:, :, :1], np.zeros((3, 1), bool), np.array([0, 0, 2]), 3)
    assert np.isnan(annual).all()
    assert np.isnan(monthly).all()


def test_months_of_a_period() -> None:
    assert period_months(PERIOD).astype(str).tolist() == [f"2021-{m:02d}" for m in range(1, 13)]
    spring = Period(dt.datetime(2021, 3, 15, tzinfo=dt.UTC), dt.datetime(2021, 6, 1, tzinfo=dt.UTC))
    assert period_months(spring).astype(str).tolist() == ["2021-03", "2021-04", "2021-05"]


@pytest.fixture
def one_point() -> gpd.GeoDataFrame:
    return gpd.GeoDataFrame(geometry=[Point(15.065, 46.2)], crs="EPSG:4326")


@pytest.mark.parametrize(
    ("bands", "message"),
    [
        (("B02", "B13"), "band B13 is not a Sentinel-2 L2A band: choose from B01"),
        (("B02", "B02"), "name a band twice: give each band once"),
        ((), "no band given for the baseline"),
    ],
)
def test_bad_bands_are_refused(one_point: gpd.GeoDataFrame, bands: tuple[str, ...], message: str) -> None:
    with pytest.raises(UserInputError, match=message):
        baseline_features(one_point, PERIOD, CatalogConfig("/nonexistent/catalog.json"), bands=bands)


def test_bad_points_are_refused(one_point: gpd.GeoDataFrame) -> None:
    nowhere = CatalogConfig("/nonexistent/catalog.json")
    cases = [
        (one_point.iloc[:0], "no points given"),
        (gpd.GeoDataFrame(geometry=[Point(15.065, 46.2)]), "declare no CRS: set it"),
        (gpd.GeoDataFrame(geometry=[Point(15.065, 46.2), None], crs="EPSG:4326"), r"points \[1\] have no geometry"),
        (gpd.GeoDataFrame(geometry=[Point(15.0, 85.0)], crs="EPSG:4326"), "point 0 at lon 15 lat 85 is outside"),
    ]
    for points, message in cases:
        with pytest.raises(UserInputError, match=message):
            baseline_features(points, PERIOD, nowhere)
