"""Seeing fields: quicklooks (one PCA colour scale over every tile and zone)."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from affine import Affine
from PIL import Image
from PIL.PngImagePlugin import PngImageFile
from rasterio.enums import ColorInterp
from rasterio.features import rasterize, shapes
from shapely.geometry import Point, Polygon, shape

from aef_pipeline.cli import main
from aef_pipeline.plan import Period
from aef_pipeline.store import create_store, finalize, open_embeddings, write_tile, written_part
from tests.refusals import assert_refused
from tests.test_maps import LAYOUT, STRIPE_PX, TILES, WINDOW, YEAR, _lonlat, _stripes


@pytest.fixture(scope="module")
def stripes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two tiles of zone 33N and one of 34N, each a 384 px window of two classes in stripes."""
    path = tmp_path_factory.mktemp("views") / "field.zarr"
    create_store(path, TILES, [YEAR], LAYOUT)
    for tile in TILES:
        write_tile(path, tile, YEAR, _stripes(tile), {"model": LAYOUT.model, "model_weights": LAYOUT.model_weights})
    finalize(path)
    return path


def test_a_quicklook_colours_each_class_alike_across_tiles_and_zones(
    stripes: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "quick.png"
    assert main(["quicklook", str(stripes), "--out", str(out), "--max-size", "4000"]) == 0
    assert "untrained encoder" in capsys.readouterr().out
    with Image.open(out) as image:
        assert isinstance(image, PngImageFile)
        assert image.mode == "RGBA"
        assert image.text["aef:period"] == "2022"
        assert len(json.loads(image.text["aef:explained_variance"])) == 3
        rgba = np.asarray(image)
    opaque = rgba[..., 3] == 255
    assert 0.01 < opaque.mean() < 0.99  # the stripes show, what was never written is transparent
    colours = rgba[opaque][:, :3].astype(float)
    # Two classes: every opaque pixel is near one of two colours (one scale across tiles and zones).
    centre = colours.mean(axis=0)
    side = (colours - centre) @ np.linalg.svd(colours - centre, full_matrices=False)[2][0] > 0
    within = np.mean([colours[side == s].std(axis=0).mean() for s in (True, False)])
    between = np.linalg.norm(colours[side].mean(axis=0) - colours[~side].mean(axis=0))
    assert between > 5 * within, (between, within)
    assert 0.3 < side.mean() < 0.7  # the two stripes are equally wide


def test_a_small_quicklook_averages_blocks(stripes: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "small.png"
    assert main(["quicklook", str(stripes), "--out", str(out), "--max-size", "256"]) == 0
    with Image.open(out) as image:
        assert max(image.size) <= 256  # the three tiles lie 250 km apart: a long thin strip
    assert "field px per picture px" in capsys.readouterr().out


def test_the_quicklook_cogs_carry_the_pngs_colours_on_the_overview_grid(
    stripes: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    png, cog = tmp_path / "quick.png", tmp_path / "quick.tif"
    # The fields span about 250 km: 4000 px need blocks of 8 px, overview level 3 (80 m).
    assert main(["quicklook", str(stripes), "--out", str(png), "--max-size", "4000", "--cog", str(cog)]) == 0
    assert f"wrote {tmp_path / 'quick_33N.tif'}, {tmp_path / 'quick_34N.tif'} (RGBA COG)" in capsys.readouterr().out
    assert not cog.exists()  # two zone groups: one COG each, named like similarity's
    with Image.open(png) as image:
        assert isinstance(image, PngImageFile)
        picture, png_transform = np.asarray(image), Affine(*json.loads(image.text["aef:transform"]))
        assert image.text["aef:crs"] == "EPSG:32633"
    with rasterio.open(tmp_path / "quick_33N.tif") as raster:
        assert raster.crs == "EPSG:32633"
        assert raster.colorinterp[3] == ColorInterp.alpha
        assert raster.tags()["aef_period"] == "2022"
        bands, transform = raster.read(), raster.transform
    level = written_part(open_embeddings(stripes, "33N", period="2022", level=3).isel(time=0), stripes, "33N", YEAR)
    assert transform == level.rio.transform(recalc=True)  # the level's own pixels, where the field was written
    assert bands.shape[1:] == (level.sizes["y"], level.sizes["x"])
    # The PNG is drawn on the first zone's grid: the 33N COG is a window of it, pixel for pixel.
    col, row = ~png_transform * (transform.c, transform.f)
    assert (col, row) == (round(col), round(row))
    window = picture[round(row) : round(row) + bands.shape[1], round(col) : round(col) + bands.shape[2]]
    assert np.array_equal(np.moveaxis(bands, 0, -1), window)
    assert 0 < (bands[3] == 255).mean() < 1
    with rasterio.open(tmp_path / "quick_34N.tif") as raster:
        assert raster.crs == "EPSG:32634"
        assert raster.transform.a == 80.0


def test_a_quicklook_cog_reprojects_every_zone_into_one_crs_on_request(stripes: Path, tmp_path: Path) -> None:
    zones, one = tmp_path / "zones.tif", tmp_path / "lonlat.tif"
    argv = ["quicklook", str(stripes), "--max-size", "4000"]
    assert main([*argv, "--out", str(tmp_path / "a.png"), "--cog", str(zones)]) == 0
    assert main([*argv, "--out", str(tmp_path / "b.png"), "--cog", str(one), "--cog-crs", "EPSG:4326"]) == 0
    assert not (tmp_path / "lonlat_33N.tif").exists()
    with rasterio.open(one) as raster:
        assert raster.crs == "EPSG:4326"
        reprojected = raster.read()
    colours = {tuple(c) for c in np.moveaxis(reprojected, 0, -1).reshape(-1, 4) if c[3] == 255}
    per_zone = set()
    for zone in ("33N", "34N"):
        with rasterio.open(tmp_path / f"zones_{zone}.tif") as raster:
            per_zone |= {tuple(c) for c in np.moveaxis(raster.read(), 0, -1).reshape(-1, 4) if c[3] == 255}
    assert len(colours) > 100
    assert colours <= per_zone  # nearest neighbour: every colour is one of a zone's pixels


@pytest.mark.parametrize(
    ("extra", "phrase"),
    [
        (["--max-size", "8"], "--max-size 8 is below 16 px"),
        (["--period", "2021"], "holds no period 2021; it holds 2022"),
        (["--out", "{tmp}/quick.jpg"], "end it with .png"),
        (["--out", "{tmp}/exists.png"], "exists: choose another --out or pass --overwrite"),
        (["--cog", "{tmp}/exists.tif"], "exists.tif exists: choose another path or pass --overwrite"),
        (["--cog", "{tmp}/old.tif"], "old_33N.tif exists: choose another path or pass --overwrite"),
        (["--cog", "{tmp}/quick.png"], "--cog {tmp}/quick.png: end it with .tif (a COG)"),
        (["--cog", "{tmp}/q.tif", "--cog-crs", "EPSG:99999"], "--cog-crs 'EPSG:99999' is not a CRS pyproj knows"),
        (["--cog-crs", "EPSG:4326"], "--cog-crs needs --cog"),
    ],
)
def test_bad_quicklook_input(
    stripes: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], phrase: str
) -> None:
    for name in ("exists.png", "exists.tif", "old_33N.tif"):
        (tmp_path / name).write_bytes(b"mine")
    argv = ["quicklook", str(stripes), "--out", str(tmp_path / "quick.png"), *(a.format(tmp=tmp_path) for a in extra)]
    assert_refused(argv, phrase.format(tmp=tmp_path), tmp_path, capsys)


@pytest.fixture(scope="module")
def two_years(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One tile, 2022 and 2023: the same vectors, except the stripes swap classes in 2023's lower half."""
    path = tmp_path_factory.mktemp("change") / "field.zarr"
    tile, later = TILES[0], Period.year(2023)
    create_store(path, [tile], [YEAR, later], LAYOUT)
    record = {"model": LAYOUT.model, "model_weights": LAYOUT.model_weights}
    first = _stripes(tile)
    second = first.copy(deep=True)
    second["embedding"][:, 192:, :] = first.embedding[:, 192:, :].roll(x=STRIPE_PX).values  # the other class
    write_tile(path, tile, YEAR, first, record)
    write_tile(path, tile, later, second, record)
    finalize(path)
    return path


def _read_band(path: Path) -> tuple[np.ndarray, Any]:
    with rasterio.open(path) as raster:
        return raster.read(1), raster.transform


def test_similarity_is_one_at_the_reference_and_polygons_cover_the_hits(stripes: Path, tmp_path: Path) -> None:
    tile = TILES[0]
    refs = gpd.GeoDataFrame(geometry=[Point(*_lonlat(tile, 100, 40))], crs="EPSG:4326")  # a class-2 pixel
    refs.to_file(tmp_path / "refs.geojson")
    out, hits = tmp_path / "sim.tif", tmp_path / "hits.geojson"
    argv = ["similarity", str(stripes), "--points", str(tmp_path / "refs.geojson"), "--out", str(out)]
    assert main([*argv, "--threshold", "0.8", "--polygons", str(hits)]) == 0
    score, transform = _read_band(tmp_path / "sim_33N.tif")
    assert abs(score[100, 40] - 1.0) < 0.03  # a unit vector with itself, after int8 rounding
    assert np.isnan(score[:16, :16]).all()  # nodata stays nodata
    same, other = score[16:WINDOW, 32:64], score[16:WINDOW, 64:96]  # the reference's class, the other
    assert np.nanmean(same) > 0.8 > np.nanmean(other)
    found = gpd.read_file(hits).to_crs(32633)
    burnt = rasterize(((g, 1) for g in found.geometry), out_shape=score.shape, transform=transform)
    thresholded = np.nan_to_num(score, nan=-np.inf) >= 0.8
    assert (burnt.astype(bool) == thresholded).mean() > 0.9999  # the same pixels, up to reprojection rounding
    assert (found["score"] >= 0.8).all()


def test_change_is_zero_where_nothing_changed(two_years: Path, tmp_path: Path) -> None:
    out = tmp_path / "change.tif"
    assert main(["change", str(two_years), "--from", "2022", "--to", "2023", "--out", str(out)]) == 0
    change, _ = _read_band(out)
    assert np.isnan(change[:16, :16]).all()
    assert np.nanmax(np.abs(change[16:192, 16:WINDOW])) < 0.03  # unchanged: 1 - |v|^2 after int8 rounding
    assert np.nanmean(change[192:WINDOW, 16:WINDOW]) > 0.5  # swapped classes
    assert change.shape == (WINDOW, WINDOW)  # the map covers what was written, not the whole tile


def test_change_at_an_overview_level_compares_the_level_and_draws_polygons_of_its_pixels(
    two_years: Path, tmp_path: Path
) -> None:
    out, changed = tmp_path / "change.tif", tmp_path / "changed.geojson"
    argv = ["change", str(two_years), "--from", "2022", "--to", "2023", "--out", str(out), "--level", "2"]
    assert main([*argv, "--threshold", "0.5", "--polygons", str(changed)]) == 0
    change, transform = _read_band(out)
    assert transform.a == 40.0
    first, second = (
        open_embeddings(two_years, period=year, level=2).isel(time=0, y=slice(0, WINDOW // 4), x=slice(0, WINDOW // 4))
        for year in ("2022", "2023")
    )
    want = 1.0 - (first.embedding * second.embedding).sum("band", skipna=False).values
    assert change.shape == want.shape
    assert np.array_equal(np.isnan(change), np.isnan(want))
    assert np.nanmax(np.abs(change - want)) < 1e-5
    found = gpd.read_file(changed).to_crs(32633)
    assert len(found)
    assert found["pixels"].sum() == int((np.nan_to_num(change, nan=-np.inf) >= 0.5).sum())
    assert np.allclose(found.area, found["pixels"] * 40.0**2, rtol=1e-3)  # outlines of 40 m pixels


def test_similarity_to_a_polygon_is_to_its_mean_vector_summed_block_by_block(
    stripes: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import aef_pipeline.maps.sample

    # Blocks of 64 px: the polygon (130 x 32 px) is read as 3 x 2 blocks, never as one array.
    monkeypatch.setattr(aef_pipeline.maps.sample, "POLYGON_BLOCK_PX", 64)
    tile = TILES[0]
    corners = [_lonlat(tile, row - 0.5, col - 0.5) for row, col in ((20, 32), (20, 64), (150, 64), (150, 32))]
    gpd.GeoDataFrame(geometry=[Polygon(corners)], crs="EPSG:4326").to_file(tmp_path / "area.geojson")
    out = tmp_path / "sim.tif"
    argv = ["similarity", str(stripes), "--points", str(tmp_path / "area.geojson"), "--out", str(out)]
    assert main(argv) == 0
    field = open_embeddings(stripes, "33N", period="2022").isel(time=0, y=slice(0, WINDOW), x=slice(0, WINDOW))
    vectors = field.embedding.transpose("y", "x", "band").values
    inside = vectors[20:150, 32:64].reshape(-1, 64)
    mean = np.nansum(inside, axis=0, dtype=np.float64)  # every pixel there is valid
    assert np.isfinite(inside).all()
    target = mean / np.linalg.norm(mean)
    score, _ = _read_band(tmp_path / "sim_33N.tif")
    assert np.nanmax(np.abs(score[:WINDOW, :WINDOW] - vectors @ target)) < 1e-5


@pytest.mark.parametrize(
    ("argv", "phrase"),
    [
        (["change", "{field}", "--from", "2022", "--to", "2022"], "--from and --to are the same period (2022)"),
        (["change", "{field}", "--from", "2022", "--to", "2021"], "holds no period 2021; it holds 2022, 2023"),
        (["change", "{field}", "--from", "2022", "--to", "2023", "--threshold", "3"], "outside [0, 2]"),
        (["similarity", "{field}", "--points", "{refs}", "--threshold", "1.5"], "outside [-1, 1]"),
        (["similarity", "{field}", "--points", "{refs}"], "holds periods 2022, 2023: pass --period"),
        (["similarity", "{field}", "--points", "{far}", "--period", "2022"], "references have no vector in"),
        (["similarity", "{field}", "--points", "{refs}", "--polygons", "{tmp}/p.geojson"], "--polygons needs"),
        (["similarity", "{field}", "--points", "{refs}", "--level", "8"], "--level 8 is not an overview level"),
        (["change", "{field}", "--from", "2022", "--to", "2023", "--level", "-1"], "--level -1 is not an overview"),
    ],
)
def test_bad_similarity_and_change_input(
    two_years: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], phrase: str
) -> None:
    gpd.GeoDataFrame(geometry=[Point(*_lonlat(TILES[0], 100, 40))], crs="EPSG:4326").to_file(tmp_path / "refs.geojson")
    gpd.GeoDataFrame(geometry=[Point(100.0, 10.0)], crs="EPSG:4326").to_file(tmp_path / "far.geojson")
    names = {"field": two_years, "refs": tmp_path / "refs.geojson", "far": tmp_path / "far.geojson", "tmp": tmp_path}
    command = [a.format(**names) for a in argv] + ["--out", str(tmp_path / "out.tif")]
    assert_refused(command, phrase, tmp_path, capsys)


def test_change_between_periods_of_different_lengths_needs_force(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "field.zarr"
    half = Period(dt.datetime(2023, 1, 1, tzinfo=dt.UTC), dt.datetime(2023, 7, 1, tzinfo=dt.UTC))
    create_store(path, TILES[:1], [YEAR, half], LAYOUT)
    argv = ["change", str(path), "--from", "2022", "--to", "2023-01-01/2023-07-01", "--out", str(tmp_path / "c.tif")]
    assert main(argv) == 2
    assert "periods 2022 and 2023-01-01_2023-07-01 differ in length" in capsys.readouterr().err


def test_the_aef_accessor_matches_the_commands(two_years: Path) -> None:
    import aef_pipeline
    import aef_pipeline.views

    first = aef_pipeline.open_embeddings(two_years, period="2022").isel(time=0, y=slice(0, WINDOW), x=slice(0, WINDOW))
    second = aef_pipeline.open_embeddings(two_years, period="2023").isel(time=0, y=slice(0, WINDOW), x=slice(0, WINDOW))
    rgba = first.aef.pca_rgb()
    assert rgba.shape == (WINDOW, WINDOW, 4)
    assert (rgba.values[:16, :16, 3] == 0).all()
    assert (rgba.values[16:, 16:, 3] == 255).all()
    reference = first.embedding.values[100, 40]
    score = first.aef.similarity(reference).values
    assert abs(score[100, 40] - float(reference @ reference)) < 1e-6
    moved = first.aef.change(second).values
    assert np.nanmax(np.abs(moved[16:192, 16:])) < 0.03
    assert np.nanmean(moved[192:, 16:]) > 0.5


def test_change_between_a_leap_year_and_another_year_needs_no_force(tmp_path: Path) -> None:
    path, tile = tmp_path / "field.zarr", TILES[0]
    years = [Period.year(2023), Period.year(2024)]  # 365 and 366 days: both annual layers
    create_store(path, [tile], years, LAYOUT)
    for year in years:
        write_tile(path, tile, year, _stripes(tile), {"model": LAYOUT.model, "model_weights": LAYOUT.model_weights})
    finalize(path)
    assert main(["change", str(path), "--from", "2023", "--to", "2024", "--out", str(tmp_path / "c.tif")]) == 0


# A lon/lat map with power-of-two pixels: every vertex is exact, so the block-by-block polygons
# can be compared with the whole-map ones by exact (topological) equality.
_MAP_TRANSFORM = Affine(2**-7, 0.0, 10.0, 0.0, -(2**-7), 50.0)


def _hit_regions() -> np.ndarray:
    """64 x 64 px of hits (True) cut by 16 px blocks in awkward ways."""
    hits = np.zeros((64, 64), dtype=bool)
    hits[4:41, 4:10] = hits[4:41, 38:44] = hits[34:41, 4:44] = True  # a U: its arms meet two blocks down
    hits[15:17, 47:49] = True  # 2 x 2 px around the corner of four blocks
    hits[31, 31] = hits[32, 32] = True  # two pixels touching at a block corner only: two regions
    hits[44:62, 18:36] = True
    hits[46:60, 20:34] = False  # a ring across four blocks...
    hits[47:50, 26:29] = True  # ...with an island across a block edge in its hole
    hits[20:30, 58:64] = True  # at the map's right edge
    return hits


def _scores_with(hits: np.ndarray, seed: int) -> np.ndarray:
    """Scores >= 0.5 exactly at `hits`, NaN at some of the others."""
    rng = np.random.default_rng(seed)
    score = np.where(hits, rng.uniform(0.5, 1.0, hits.shape), rng.uniform(-1.0, 0.5, hits.shape))
    score[(~hits) & (rng.uniform(size=hits.shape) < 0.1)] = np.nan
    return score.astype(np.float32)


def _written_map(score: np.ndarray, path: Path) -> Path:
    """`score` as a GeoTIFF in blocks of 16 x 16 px."""
    profile = {"driver": "GTiff", "tiled": True, "blockxsize": 16, "blockysize": 16, "nodata": np.nan}
    height, width = score.shape
    with rasterio.open(
        path,
        "w",
        **profile,
        width=width,
        height=height,
        count=1,
        dtype="float32",
        crs="EPSG:4326",
        transform=_MAP_TRANSFORM,
    ) as raster:
        raster.write(score, 1)
    return path


def _whole_map_polygons(score: np.ndarray, threshold: float) -> gpd.GeoDataFrame:
    """The reference: the whole array vectorised at once, each outline with its pixels' mean score."""
    hits = np.nan_to_num(score, nan=-np.inf) >= threshold
    outlines = [shape(g) for g, _ in shapes(hits.astype(np.uint8), mask=hits, transform=_MAP_TRANSFORM)]
    labels = rasterize(((o, i + 1) for i, o in enumerate(outlines)), out_shape=score.shape, transform=_MAP_TRANSFORM)
    pixels = np.bincount(labels.ravel(), minlength=len(outlines) + 1)[1:]
    sums = np.bincount(labels.ravel(), weights=np.nan_to_num(score).ravel(), minlength=len(outlines) + 1)[1:]
    return gpd.GeoDataFrame({"score": sums / pixels, "pixels": pixels}, geometry=outlines, crs="EPSG:4326")


def _in_order(frame: gpd.GeoDataFrame) -> gpd.GeoDataFrame:
    bounds = frame.bounds
    return frame.assign(**bounds).sort_values(["minx", "miny", "maxx", "maxy"]).reset_index(drop=True)


def _assert_same_polygons(found: gpd.GeoDataFrame, want: gpd.GeoDataFrame) -> None:
    found, want = _in_order(found), _in_order(want)
    assert list(found.columns[:2]) == ["score", "pixels"]
    assert len(found) == len(want)
    assert (found.geom_type == "Polygon").all()
    for got, expected in zip(found.geometry, want.geometry, strict=True):
        assert got.symmetric_difference(expected).area < 1e-15
        assert got.normalize().equals(expected.normalize()), (got.wkt, expected.wkt)
    assert found["pixels"].tolist() == want["pixels"].tolist()
    assert np.allclose(found["score"], want["score"], rtol=1e-12, atol=0)


@pytest.mark.parametrize("seed", [0, 1])
def test_polygons_drawn_block_by_block_equal_the_whole_map_vectorised_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, seed: int
) -> None:
    import aef_pipeline.views.compare as compare

    # Blocks of 16 px (the file's own blocks too): the 64 x 64 px map is read as 4 x 4 windows.
    monkeypatch.setattr(compare, "POLYGON_BLOCK_PX", 16)
    score = _scores_with(_hit_regions(), seed)
    path = _written_map(score, tmp_path / "map.tif")
    assert len(compare._windows(64, 64, (16, 16))) == 16
    found = compare._polygons(path, 0.5)
    assert found.crs == "EPSG:4326"
    want = _whole_map_polygons(score, 0.5)
    assert len(want) == 7  # the U, the corner square, two diagonal pixels, the ring, its island, the edge strip
    _assert_same_polygons(found, want)


@pytest.mark.parametrize("seed", range(4))
def test_polygons_of_noise_drawn_block_by_block_equal_the_whole_map_vectorised_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, seed: int
) -> None:
    import aef_pipeline.views.compare as compare

    # Noise thresholded at about half the pixels: many regions touching at corners, with holes, cut by blocks.
    monkeypatch.setattr(compare, "POLYGON_BLOCK_PX", 16)
    score = _scores_with(np.random.default_rng(100 + seed).uniform(size=(64, 64)) < 0.55, seed)
    path = _written_map(score, tmp_path / "map.tif")
    _assert_same_polygons(compare._polygons(path, 0.5), _whole_map_polygons(score, 0.5))


@pytest.mark.parametrize(
    ("limit", "height", "width", "block", "sides"),
    [
        (2048, 5000, 3000, (512, 512), (2048, 2048)),  # whole internal blocks per window
        (2048, 5000, 3000, (384, 384), (1920, 1920)),  # rounded down to a multiple of the blocks
        (2048, 5000, 3000, (1, 3000), (2048, 2048)),  # a striped file: its long rows are cut
        (16, 40, 40, (512, 512), (16, 16)),  # blocks above the limit: the memory bound comes first
    ],
)
def test_polygon_windows_cover_the_map_once_aligned_to_its_blocks(
    monkeypatch: pytest.MonkeyPatch,
    limit: int,
    height: int,
    width: int,
    block: tuple[int, int],
    sides: tuple[int, int],
) -> None:
    import aef_pipeline.views.compare as compare

    monkeypatch.setattr(compare, "POLYGON_BLOCK_PX", limit)
    windows = compare._windows(height, width, block)
    covered = np.zeros((height, width), dtype=np.uint8)
    for window in windows:
        assert (window.row_off % sides[0], window.col_off % sides[1]) == (0, 0)
        assert window.height <= sides[0]
        assert window.width <= sides[1]
        covered[window.toslices()] += 1
    assert (covered == 1).all()
