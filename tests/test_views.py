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
from PIL import Image
from PIL.PngImagePlugin import PngImageFile
from rasterio.features import rasterize
from shapely.geometry import Point

from aef_pipeline.cli import main
from aef_pipeline.plan import Period
from aef_pipeline.store import create_store, finalize, write_tile
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


@pytest.mark.parametrize(
    ("extra", "phrase"),
    [
        (["--max-size", "8"], "--max-size 8 is below 16 px"),
        (["--period", "2021"], "holds no period 2021; it holds 2022"),
        (["--out", "{tmp}/quick.jpg"], "end it with .png"),
        (["--out", "{tmp}/exists.png"], "exists: choose another --out or pass --overwrite"),
    ],
)
def test_bad_quicklook_input(
    stripes: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], phrase: str
) -> None:
    (tmp_path / "exists.png").write_bytes(b"mine")
    argv = ["quicklook", str(stripes), "--out", str(tmp_path / "quick.png"), *(a.format(tmp=tmp_path) for a in extra)]
    assert_refused(argv, phrase, tmp_path, capsys)


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
