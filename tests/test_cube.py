"""From search to the encoder's input cube, checked against the synthetic truth."""

from __future__ import annotations

import datetime as dt
import shutil
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

import dask
import numpy as np
import pystac
import pytest
import xarray as xr
from distributed import Client, LocalCluster
from odc.geo.geobox import GeoBox
from odc.loader._rio import RioDriver, RioReader

from aef_pipeline.grid import BBox, TileId, tiles_for_bbox
from aef_pipeline.load import ReadFailureWarning, load_kept_frames, load_selection, report_read_failures
from aef_pipeline.plan import Period
from aef_pipeline.preprocess import MaskPolicy, fuse_overpasses, masked_classes, preprocess
from aef_pipeline.search import CatalogConfig, SceneSelection, open_source, search_tile
from aef_pipeline.testing import (
    CatalogSpec,
    Site,
    SyntheticCatalog,
    build_catalog,
    render_scene,
    serve_catalogs,
    write_static_catalog,
)
from aef_pipeline.testing.scenes import DEFAULT_SITE, Scene

BANDS = ("B02", "B03", "B04", "B08", "B11")
TEN_METRE = ("B02", "B03", "B04", "B08")  # on the MGRS tiles' own 10 m lattice: read without resampling


def _tiles_of(site: Site) -> list[TileId]:
    half_lat = site.size_m / 2 / 111_320
    half_lon = half_lat / np.cos(np.radians(site.lat))
    return tiles_for_bbox(BBox(site.lon - half_lon, site.lat - half_lat, site.lon + half_lon, site.lat + half_lat))


def _site_geobox(scene: Scene) -> GeoBox:
    """The scene's own 10 m window: a piece of the global grid (both sit on whole 10 m)."""
    return GeoBox(scene.shape(10), scene.transform(10), f"EPSG:{scene.tile.epsg}")


def _select(url: str, collection: str, geobox: GeoBox, year: int) -> SceneSelection:
    return search_tile(open_source(CatalogConfig(url, collections=(collection,))), geobox, Period.year(year), BANDS)


def _cube(url: str, catalog: SyntheticCatalog, year: int) -> tuple[xr.Dataset, SceneSelection]:
    geobox = _site_geobox(catalog.scenes[0])
    selection = _select(url, catalog.collection_id, geobox, year)
    loaded = load_selection(selection, geobox, BANDS, chunk_rows=None)
    return preprocess(loaded, selection.scenes, BANDS, core=geobox), selection


def test_both_providers_give_the_truth(stac_api: str, catalog: SyntheticCatalog) -> None:
    """Offsets removed where the pixels carry them (ES c1 05.00, PC from 04.00), never twice."""
    for year in (2021, 2022):
        cube, selection = _cube(stac_api, catalog, year)
        reference = catalog.scenes[0].tile.name  # the tile whose window the cube covers exactly
        times = list(cube.time.values.astype("datetime64[us]"))
        checked = 0
        for item, info in zip(selection.items, selection.scenes, strict=True):
            scene = catalog.scene_of(item.id)
            when = np.datetime64(scene.sensing_time, "us")
            if scene.tile.name != reference or when not in times:  # the overcast frame is dropped
                continue
            frame = cube.isel(time=times.index(when))
            truth = render_scene(scene).reflectance[10]
            for band in TEN_METRE:
                got = frame.reflectance.sel(band=band).values
                want = np.round(truth[_band_index(band)] * 10_000) / 10_000
                valid = frame.valid.values
                np.testing.assert_allclose(got[valid], want[valid], atol=1e-6)
                assert np.isnan(got[~valid]).all()
            checked += 1
            assert info.dn_offset == (1000 if scene.has_boa_offset else 0)
        assert checked >= 10


def _band_index(name: str) -> int:
    from aef_pipeline.sentinel2 import S2_BANDS

    return [band.name for band in S2_BANDS].index(name)


def test_the_two_providers_give_the_same_cube(
    stac_api: str, earth_search_catalog: SyntheticCatalog, planetary_computer_catalog: SyntheticCatalog
) -> None:
    for year in (2021, 2022):
        es, _ = _cube(stac_api, earth_search_catalog, year)
        pc, _ = _cube(stac_api, planetary_computer_catalog, year)
        xr.testing.assert_identical(es.drop_attrs(), pc.drop_attrs())


def test_legacy_earth_search_matches_c1_despite_its_offset_metadata(
    stac_api: str, earth_search_catalog: SyntheticCatalog, legacy_earth_search_catalog: SyntheticCatalog
) -> None:
    """Legacy products from 04.00 whose offset Earth Search removed (and flagged), next to ones that
    still carry it, read from the static catalog: the same reflectance as collection 1."""
    static = str(write_static_catalog(legacy_earth_search_catalog))
    for year in (2021, 2022):
        c1, _ = _cube(stac_api, earth_search_catalog, year)
        legacy, _ = _cube(static, legacy_earth_search_catalog, year)
        xr.testing.assert_identical(c1.drop_attrs(), legacy.drop_attrs())


def test_frames_one_per_overpass_timestamps_exact(stac_api: str, catalog: SyntheticCatalog) -> None:
    cube, selection = _cube(stac_api, catalog, 2021)
    acquisitions = {catalog.scene_of(item.id).acquisition for item in selection.items}
    clear_enough = {acq for acq in acquisitions if not acq.sky.overcast}
    # The duplicated acquisition is one frame; the overcast one has no valid pixel and is dropped.
    assert cube.sizes["time"] == len(clear_enough) == len(acquisitions) - 1
    assert cube.attrs["dropped_frames"] == 1
    expected = sorted(np.datetime64(acq.start + dt.timedelta(seconds=13.5), "us") for acq in clear_enough)
    np.testing.assert_array_equal(cube.time.values.astype("datetime64[us]"), expected)
    assert cube.reflectance.dims == ("time", "band", "y", "x")
    assert list(cube.band.values) == list(BANDS)
    assert cube.reflectance.dtype == np.float32


def test_fused_frames_in_time_order_first_valid_wins_and_kept_ones_only() -> None:
    """Products out of time order, one overpass in two products: fused in time order, the first
    product's valid pixels winning, then only the kept frames, lazily as eagerly."""
    times = np.array(["2021-03-01", "2021-01-01", "2021-02-01", "2021-01-01"], "datetime64[us]")
    acquisitions = ["march", "january", "february", "january"]
    rng = np.random.default_rng(0)
    values = rng.random((4, 2, 3, 3), dtype=np.float32)
    valid = rng.random((4, 3, 3)) > 0.4
    reflectance = xr.DataArray(np.where(valid[:, None], values, np.nan), dims=("time", "band", "y", "x"))
    reflectance, valid_array = (
        a.assign_coords(time=times) for a in (reflectance, xr.DataArray(valid, dims=("time", "y", "x")))
    )
    january = np.where(valid[1][None], values[1], values[3])  # the first product where valid, else the second
    for chunks in (None, {"time": 2}):
        r, v = (reflectance, valid_array) if chunks is None else (reflectance.chunk(chunks), valid_array.chunk(chunks))
        fused, fused_valid = fuse_overpasses(r, v, acquisitions)
        assert list(fused.acquisition.values) == ["january", "february", "march"]
        np.testing.assert_array_equal(fused.time.values, times[[1, 2, 0]])
        np.testing.assert_array_equal(
            np.nan_to_num(fused.values[0]), np.nan_to_num(np.where(valid[1][None] | valid[3][None], january, np.nan))
        )
        np.testing.assert_array_equal(fused_valid.values[0], valid[1] | valid[3])
        kept, kept_valid = fuse_overpasses(r, v, acquisitions, np.array([True, False, True]))
        xr.testing.assert_identical(kept.compute(), fused.isel(time=[0, 2]).compute())
        xr.testing.assert_identical(kept_valid.compute(), fused_valid.isel(time=[0, 2]).compute())
        none, _ = fuse_overpasses(r, v, acquisitions, np.zeros(3, bool))
        assert none.sizes["time"] == 0


def test_masked_classes_equal_isin_for_every_code() -> None:
    codes = xr.DataArray(np.arange(256, dtype=np.uint8).reshape(16, 16), dims=("y", "x"))
    for policy in (MaskPolicy(), MaskPolicy(frozenset({0}))):
        expected = codes.isin(sorted(policy.invalid_scl))
        xr.testing.assert_identical(masked_classes(codes, policy), expected)
        xr.testing.assert_identical(masked_classes(codes.chunk({"y": 4}), policy).compute(), expected)
        xr.testing.assert_identical(masked_classes(codes.astype(np.int16), policy), expected)  # not uint8: isin


class _RecordingReader(RioDriver):
    """odc-stac's reader, noting the URI of every read (reads run on the load's threads)."""

    def __init__(self) -> None:
        super().__init__()
        self.read_uris: list[str] = []

    def open(self, src: Any, ctx: Any) -> RioReader:
        self.read_uris.append(src.uri)
        return RioReader(src, ctx)


@pytest.mark.parametrize("chunk_rows", [None, 64])
def test_bands_are_read_only_for_the_frames_kept(
    stac_api: str, catalog: SyntheticCatalog, chunk_rows: int | None
) -> None:
    geobox = _site_geobox(catalog.scenes[0])
    core = geobox[8:-8, 8:-8]
    selection = _select(stac_api, catalog.collection_id, geobox, 2021)
    overcast = {item.id for item in selection.items if catalog.scene_of(item.id).acquisition.sky.overcast}
    assert overcast  # one acquisition, in the products of two MGRS tiles
    reader = _RecordingReader()
    with dask.config.set(scheduler="threads"):
        cube = load_kept_frames(selection, geobox, core, BANDS, MaskPolicy(), chunk_rows=chunk_rows, reader=reader)
        cube = cube.compute()
        loaded = load_selection(selection, geobox, BANDS, chunk_rows=chunk_rows)
        expected = preprocess(loaded, selection.scenes, BANDS, core=core).compute()
    xr.testing.assert_identical(cube, expected)  # attrs too: the overcast frame counts as dropped
    assert cube.attrs["dropped_frames"] == 1
    scl_chunks = 1 if chunk_rows is None else -(-geobox.shape[0] // chunk_rows)
    for item in selection.items:
        reads = Counter(name for uri in reader.read_uris for name, asset in item.assets.items() if uri == asset.href)
        scl = _scl_key(item)
        assert 1 <= reads[scl] <= scl_chunks  # read once, in the first pass: not again with the bands
        band_reads = sum(count for name, count in reads.items() if name != scl)
        assert (band_reads == 0) == (item.id in overcast)  # the overcast products' bands: never


def _scl_key(item: pystac.Item) -> str:
    return next(key for key in item.assets if key.lower() == "scl")


def test_partly_imaged_frame_keeps_its_valid_part(stac_api: str, catalog: SyntheticCatalog) -> None:
    cube, selection = _cube(stac_api, catalog, 2021)
    swath = next(catalog.scene_of(item.id) for item in selection.items if catalog.scene_of(item.id).acquisition.swath)
    frame = cube.sel(time=np.datetime64(swath.sensing_time, "us"))
    share = float(frame.valid.mean())
    assert 0.2 < share < 0.8  # the western part was not imaged


def test_cube_grid_is_exactly_the_tile_plus_halo(stac_api: str, earth_search_catalog: SyntheticCatalog) -> None:
    """Two MGRS tiles with different pixel lattices overlap the site; the cube is on the tile grid."""
    (tile,) = _tiles_of(DEFAULT_SITE)
    for halo in (0, 16):
        geobox = tile.load_geobox(halo)
        selection = _select(stac_api, earth_search_catalog.collection_id, geobox, 2022)
        assert len({info.mgrs_tile for info in selection.scenes}) == 2
        cube = preprocess(load_selection(selection, geobox, BANDS), selection.scenes, BANDS, core=tile.geobox)
        assert cube.odc.geobox == geobox
        assert cube.odc.geobox.affine == tile.geobox.affine * tile.geobox.affine.translation(-halo, -halo)
        assert cube.reflectance.shape[2:] == (1920 + 2 * halo, 1920 + 2 * halo)


def test_unreadable_asset_is_skipped_with_a_warning(tmp_path: Path) -> None:
    catalog = build_catalog(tmp_path / "cat", "earth-search", CatalogSpec(years=(2022,), revisit_days=120))
    broken = catalog.items[0]["assets"]["red"]["href"].removeprefix("file://")
    Path(broken).unlink()  # as an asset answering 404 would be
    static = str(write_static_catalog(catalog))
    geobox = _site_geobox(catalog.scenes[0])
    selection = _select(static, catalog.collection_id, geobox, 2022)
    expected = r"unreadable asset skipped, its pixels masked: .*B04\.tif"
    # Synchronous: xarray enters warnings.catch_warnings inside dask's threads, and Python < 3.14
    # keeps that state per process, so a thread can undo pytest's recorder (the list is unaffected).
    with (
        dask.config.set(scheduler="synchronous"),
        pytest.warns(ReadFailureWarning, match=expected),
        report_read_failures() as failures,
    ):
        cube = preprocess(load_selection(selection, geobox, BANDS), selection.scenes, BANDS, geobox).compute()
    assert len(failures) == 1
    # The overpass is still there: the neighbouring MGRS tile's product fills it.
    first = catalog.scenes[0]
    assert np.datetime64(first.sensing_time, "us") in cube.time.values.astype("datetime64[us]")
    shutil.rmtree(tmp_path / "cat")


def test_two_tiles_on_a_cluster_equal_the_plain_load(tmp_path: Path) -> None:
    """A site across a tile edge: both tiles' cubes computed by 2 worker processes equal numpy loads."""
    site = Site(lon=15.2387, lat=46.2)  # straddles the edge of columns 26 and 27 of zone 33
    spec = CatalogSpec(site=site, years=(2022,), revisit_days=120, duplicate_index=-1, swath_edge_index=-1)
    catalog = build_catalog(tmp_path / "cat", "earth-search", spec)
    tiles = _tiles_of(site)
    assert len(tiles) == 2
    with serve_catalogs([catalog], tmp_path / "api") as url:
        selections = {tile: _select(url, catalog.collection_id, tile.load_geobox(), 2022) for tile in tiles}
    plain = {
        tile: preprocess(
            load_selection(sel, tile.load_geobox(), BANDS, chunk_rows=None), sel.scenes, BANDS, tile.geobox
        )
        for tile, sel in selections.items()
    }
    with (
        LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster,  # type: ignore[no-untyped-call]
        Client(cluster) as client,  # type: ignore[no-untyped-call]
        warnings.catch_warnings(),
    ):
        warnings.simplefilter("ignore", ResourceWarning)  # distributed's own sockets at shutdown
        lazy = [
            preprocess(load_selection(sel, tile.load_geobox(), BANDS, chunk_rows=1024), sel.scenes, BANDS, tile.geobox)
            for tile, sel in selections.items()
        ]
        assert all(cube.reflectance.chunks for cube in lazy)
        computed = client.compute(lazy, sync=True)
    for tile, cube in zip(tiles, computed, strict=True):
        xr.testing.assert_identical(cube, plain[tile])
        assert int(cube.valid.sum()) > 10_000  # the site holds data in both tiles


def test_asset_urls_are_signed_at_read_time(stac_api: str, planetary_computer_catalog: SyntheticCatalog) -> None:
    """Planetary Computer tokens expire: URLs go through the signer when read, not when searched."""
    signed: list[str] = []

    def sign(url: str) -> str:
        signed.append(url)
        return url

    geobox = _site_geobox(planetary_computer_catalog.scenes[0])
    selection = _select(stac_api, planetary_computer_catalog.collection_id, geobox, 2022)
    load_selection(selection, geobox, BANDS, chunk_rows=None, sign_url=sign)
    assert len(signed) == len(selection.items) * (len(BANDS) + 1)
    assert all(url.startswith("file://") for url in signed)


def test_twenty_metre_bands_equal_gdal_warp_pixel_for_pixel(stac_api: str, catalog: SyntheticCatalog) -> None:
    """B11 (bilinear) and SCL (nearest) read on their own 20 m grid and brought to 10 m per row block
    equal odc-stac's GDAL warp onto the 10 m grid, swath edges and row-block seams included."""
    import odc.stac

    from aef_pipeline.load import _STAC_CFG, canonical_item

    (tile,) = _tiles_of(DEFAULT_SITE)
    site = _site_geobox(catalog.scenes[0])
    x, y = ~tile.geobox.affine * (site.affine.c, site.affine.f)  # the site's corner, in tile pixels
    row, col = int(y) // 2 * 2, int(x) // 2 * 2
    for geobox in (
        tile.geobox[row : row + 200, col : col + 240].pad(8),  # on the 20 m lattice
        tile.geobox[row + 1 : row + 201, col : col + 240],
    ):  # off it: warped by odc-stac
        selection = _select(stac_api, catalog.collection_id, geobox, 2021)
        pairs = zip(selection.items, selection.scenes, strict=True)
        items = [canonical_item(item, dict(info.asset_keys)) for item, info in pairs]
        warped = odc.stac.load(
            items,
            bands=["B11", "SCL"],
            geobox=geobox,
            groupby="id",
            preserve_original_order=True,
            resampling={"B11": "bilinear", "SCL": "nearest"},
            stac_cfg=_STAC_CFG,
        )
        for chunk_rows in (None, 64):  # eager, and lazy in row blocks that cut the area into four
            ours = load_selection(selection, geobox, BANDS, chunk_rows=chunk_rows)
            for band in ("B11", "SCL"):
                np.testing.assert_array_equal(ours[band].values, warped[band].values, err_msg=f"{band} {chunk_rows}")
        b11 = warped.B11.values
        assert 0 < (b11 == 0).mean() < 0.2  # the swath edge's nodata is in the comparison


def test_bilinear_doubling_takes_the_short_way_only_where_it_gives_the_same_values() -> None:
    """Frames without nodata are doubled in integers, the others with renormalised weights: every
    frame equals the general computation, alone or in a block with the other kind."""
    from aef_pipeline.load import _doubled_with_nodata, bilinear_doubled

    rng = np.random.default_rng(7)
    block = rng.integers(1, 2**16, size=(5, 2, 34, 42), dtype=np.uint16)  # (frames, extra, h+2, w+2)
    block[1, 0, 3:9, 5:30] = 0  # a swath edge in one frame
    block[3] = np.where(rng.random(block[3].shape) < 0.3, 0, block[3])  # scattered nodata in another
    expected = _doubled_with_nodata(block)
    assert (expected[1] == 0).any()
    assert (expected[0] > 0).all()
    np.testing.assert_array_equal(bilinear_doubled(block), expected)
    np.testing.assert_array_equal(bilinear_doubled(block[0]), expected[0])  # all valid
    np.testing.assert_array_equal(bilinear_doubled(block[3, 0]), expected[3, 0])  # 2-d, with nodata
    top = np.full((4, 4), 65535, dtype=np.uint16)  # the largest sums round as in float
    np.testing.assert_array_equal(bilinear_doubled(top), _doubled_with_nodata(top))
