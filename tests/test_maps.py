"""From a field to maps: sampling points and polygons, classified and regressed maps, bad input.

The field here is written straight into a real store (no encoder): stripes of two classes, 320 m
wide, with their own directions on the sphere, so what a map should show is known exactly.
"""

from __future__ import annotations

import datetime as dt
import json
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import rioxarray
import xarray as xr
from pyproj import Transformer
from rio_cogeo.cogeo import cog_validate
from shapely.geometry import Point, box

from aef_pipeline.cli import main
from aef_pipeline.grid import TileId
from aef_pipeline.maps.sample import sample_field, vectors_as_float
from aef_pipeline.plan import Period
from aef_pipeline.store import NODATA_INT8, StoreLayout, create_store, finalize, open_embeddings, write_tile
from tests.refusals import assert_refused

YEAR = Period.year(2022)
WINDOW = 384  # px written of each tile: 3 x 3 blocks of 1.28 km
TILES = [TileId(33, "N", 26, 266), TileId(33, "N", 27, 266), TileId(34, "N", 14, 266)]  # c014: east of 18 E
LAYOUT = StoreLayout("tiny", "untrained: deterministic initialisation from seed 0")
STRIPE_PX = 32


def _stripes(tile: TileId) -> xr.Dataset:
    """Class 1 or 2 by 320 m stripe of the tile's columns; each class a noisy direction; a 16 px
    nodata corner."""
    rng = np.random.default_rng(tile.col)
    directions = np.random.default_rng(0).normal(size=(3, 64)).astype(np.float32)
    classes = 1 + (np.arange(WINDOW) // STRIPE_PX) % 2
    vectors = directions[classes][None, :, :] + 0.15 * rng.normal(size=(WINDOW, WINDOW, 64)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=-1, keepdims=True)
    vectors[:16, :16] = np.nan
    observations = np.full((WINDOW, WINDOW), 9, np.int16)
    observations[:16, :16] = 0
    coords = tile.geobox.coordinates
    return xr.Dataset(
        {"embedding": (("dim", "y", "x"), vectors.transpose(2, 0, 1)), "observations": (("y", "x"), observations)},
        coords={"y": coords["y"].values[:WINDOW], "x": coords["x"].values[:WINDOW]},
    )


@pytest.fixture(scope="module")
def field(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("maps") / "field.zarr"
    create_store(path, [*TILES, TileId(33, "N", 28, 266)], [YEAR], LAYOUT)  # c028 planned, never written
    for tile in TILES:
        write_tile(path, tile, YEAR, _stripes(tile), {"model": LAYOUT.model, "model_weights": LAYOUT.model_weights})
    finalize(path)
    return path


def _lonlat(tile: TileId, row: float, col: float) -> tuple[float, float]:
    """Lon/lat of a pixel centre of the tile (row, col from its top-left corner)."""
    x = tile.geobox.affine.c + (col + 0.5) * 10
    y = tile.geobox.affine.f - (row + 0.5) * 10
    lon, lat = Transformer.from_crs(tile.epsg, 4326, always_xy=True).transform(x, y)
    return float(lon), float(lat)


def _labels(n_per_tile: int, seed: int = 1) -> gpd.GeoDataFrame:
    """Points at random pixel centres of the written windows (away from the nodata corner), with
    the stripe's class name and a value that follows it."""
    rng = np.random.default_rng(seed)
    rows = []
    for tile in TILES:
        for r, c in rng.integers(16, WINDOW, size=(n_per_tile, 2)):
            stripe = 1 + (c // STRIPE_PX) % 2
            rows.append({"cover": ["", "meadow", "orchard"][stripe], "biomass": 50.0 * stripe, "tile": str(tile)})
            rows[-1]["geometry"] = Point(*_lonlat(tile, r, c))
    return gpd.GeoDataFrame(rows, crs="EPSG:4326")


def test_points_are_read_in_their_own_zone_and_nodata_is_never_a_value(field: Path) -> None:
    (tile_33, _, tile_34), far = TILES, TileId(33, "N", 28, 266)
    points = gpd.GeoDataFrame(
        {"name": ["in 33N", "in 34N", "nodata corner", "tile not written", "zone not in the field"]},
        geometry=[
            Point(*_lonlat(tile_33, 100, 200)),
            Point(*_lonlat(tile_34, 50, 60)),
            Point(*_lonlat(tile_33, 3, 3)),
            Point(*_lonlat(far, 100, 100)),
            Point(25.0, 46.2),
        ],
        crs="EPSG:4326",
    )
    samples = sample_field(field, points)
    assert list(samples.table["name"]) == ["in 33N", "in 34N"]
    assert list(samples.table["zone"]) == ["33N", "34N"]
    reasons = {m["index"]: m["reason"] for m in samples.missing}
    assert "nodata" in reasons[2]
    assert "its tile has no finished 2022" in reasons[3]
    assert "zone 35N" in reasons[4]
    for (_, row), zone, tile, (r, c) in zip(
        samples.table.iterrows(), ("33N", "34N"), (tile_33, tile_34), ((100, 200), (50, 60)), strict=True
    ):
        x = tile.geobox.affine.c + (c + 0.5) * 10
        y = tile.geobox.affine.f - (r + 0.5) * 10
        want = open_embeddings(field, zone=zone).isel(time=0).embedding.sel(x=x, y=y).values
        np.testing.assert_array_equal(samples.vectors()[list(samples.table.index).index(row.name)], want)
    assert samples.vectors().min() >= -1.0  # -128 de-quantised unmasked would be -1.0079


def test_a_nodata_band_makes_the_whole_vector_nodata() -> None:
    stored = np.full((2, 64), 100, np.int8)
    stored[1, 7] = NODATA_INT8
    floats = vectors_as_float(stored, "int8")
    assert np.isfinite(floats[0]).all()
    assert np.isnan(floats[1]).all()


def test_a_polygon_gets_the_renormalised_mean_of_the_pixels_it_holds(field: Path) -> None:
    tile = TILES[0]
    west, south = _lonlat(tile, 120.3, 39.7)  # corners between pixel centres: none on an edge
    east, north = _lonlat(tile, 99.7, 60.3)
    samples = sample_field(field, gpd.GeoDataFrame(geometry=[box(west, south, east, north)], crs="EPSG:4326"))
    ds = open_embeddings(field, zone="33N").isel(time=0, y=slice(0, 200), x=slice(0, 200))
    x, y = np.meshgrid(ds.x.values, ds.y.values)
    lon, lat = Transformer.from_crs(32633, 4326, always_xy=True).transform(x, y)
    inside = (lon >= west) & (lon <= east) & (lat >= south) & (lat <= north)
    assert 300 < inside.sum() < 500  # about 20 x 20 pixel centres
    mean = ds.embedding.values[inside].mean(axis=0)
    np.testing.assert_allclose(samples.vectors()[0], mean / np.linalg.norm(mean), atol=1e-5)
    assert samples.table["pixels"].iloc[0] == inside.sum()


def test_classify_writes_a_cog_on_the_field_grid_with_an_honest_accuracy(
    field: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    labels = tmp_path / "labels.geojson"
    _labels(40).to_file(labels)
    out = tmp_path / "map.tif"
    assert main(["classify", str(field), "--labels", str(labels), "--property", "cover", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "balanced accuracy" in printed
    assert "untrained encoder" in printed
    report = json.loads((tmp_path / "map.tif.json").read_text())
    assert report["cross_validation"]["balanced_accuracy"] > 0.95
    assert report["classes"] == [
        {"code": 1, "name": "meadow", "labels": report["classes"][0]["labels"]},
        {"code": 2, "name": "orchard", "labels": report["classes"][1]["labels"]},
    ]
    for zone, epsg in (("33N", 32633), ("34N", 32634)):
        path = tmp_path / f"map_{zone}.tif"
        valid, errors, _ = cog_validate(str(path))
        assert valid, errors
        opened = rioxarray.open_rasterio(path)
        assert isinstance(opened, xr.DataArray)
        region = open_embeddings(field, zone=zone)
        assert opened.rio.crs.to_epsg() == epsg
        assert opened.rio.transform() == region.rio.transform()
        assert opened.rio.nodata == 255
        classes = opened.isel(band=0).values
        assert (classes[:16, :16] == 255).all()  # nodata where the field has none
        stripes = 1 + (np.arange(16, WINDOW) // STRIPE_PX) % 2
        hits = (classes[16:WINDOW, 16:WINDOW] == stripes[None, :]).mean()
        assert hits > 0.95
        names = ElementTree.parse(f"{path}.aux.xml").findall(".//Category")
        assert [n.text for n in names] == [None, "meadow", "orchard"]
    assert not (tmp_path / "map.tif").exists()  # two zones: one map each


def test_regress_writes_zarr_with_values_and_spread(field: Path, tmp_path: Path) -> None:
    labels = tmp_path / "labels.parquet"
    _labels(30).to_parquet(labels)
    out = tmp_path / "biomass.zarr"
    argv = ["classify", str(field), "--labels", str(labels), "--property", "biomass", "--regress", "--out", str(out)]
    assert main([*argv, "--method", "forest", "--period", "2022"]) == 0
    report = json.loads((tmp_path / "biomass.zarr.json").read_text())
    assert report["cross_validation"]["r2"] > 0.9
    ds = xr.open_zarr(tmp_path / "biomass_33N.zarr", decode_coords="all")
    assert ds.rio.crs.to_epsg() == 32633
    values = ds.value.values
    assert np.isnan(values[:16, :16]).all()
    orchard = values[16:WINDOW, STRIPE_PX : 2 * STRIPE_PX]  # columns 32-63: the second stripe, 100 t
    assert abs(np.nanmedian(orchard) - 100.0) < 5
    assert np.nanmax(ds.spread.values) > 0


BAD = [
    (["--property", "colour"], "has no property 'colour'; it has cover, biomass, tile"),
    (["--property", "cover", "--period", "2021"], "holds no period 2021; it holds 2022"),
    (["--property", "tile", "--regress"], "--regress needs a numeric property; 'tile' holds"),
    (["--property", "cover", "--folds", "200"], "fewer than the 200 cross-validation folds"),
    (["--property", "cover", "--method", "svm"], "--method 'svm' is not one of knn, linear, forest"),
    (["--property", "cover", "--out", "{tmp}/map.png"], "end it with .tif (a COG) or .zarr"),
    (["--property", "cover", "--out", "{tmp}/exists.tif"], "exists: choose another --out or pass --overwrite"),
    (["--labels", "{tmp}/one-class.geojson", "--property", "cover"], "has a single class (meadow)"),
    (["--labels", "{tmp}/far.geojson", "--property", "cover"], "none of the 3 points of"),
    (["--labels", "{tmp}/metres.csv", "--property", "cover"], "not lon/lat in the CRS declared: pass --points-crs"),
    (["--labels", "{tmp}/broken.gpkg", "--property", "cover"], "cannot read points from"),
    (["--labels", "{tmp}/unlabelled.geojson", "--property", "cover"], "labelled points have no 'cover'"),
]


@pytest.mark.parametrize(("extra", "phrase"), BAD, ids=[phrase[:30] for _, phrase in BAD])
def test_bad_map_input(
    field: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], phrase: str
) -> None:
    labels = tmp_path / "labels.geojson"
    _labels(12).to_file(labels)
    _labels(12)[lambda f: f["cover"] == "meadow"].to_file(tmp_path / "one-class.geojson")
    gpd.GeoDataFrame({"cover": ["a", "b", "a"]}, geometry=[Point(100, 10)] * 3, crs="EPSG:4326").to_file(
        tmp_path / "far.geojson"
    )
    (tmp_path / "metres.csv").write_text("x,y,cover\n505000,5117000,meadow\n506000,5118000,orchard\n")
    (tmp_path / "broken.gpkg").write_bytes(b"not a geopackage")
    unlabelled = _labels(12)
    unlabelled.loc[3, "cover"] = None  # must not become a class "None"
    unlabelled.to_file(tmp_path / "unlabelled.geojson")
    (tmp_path / "exists.tif").write_bytes(b"mine")
    argv = ["classify", str(field), "--labels", str(labels), "--out", str(tmp_path / "map.tif")]
    argv += [arg.format(tmp=tmp_path) for arg in extra]
    assert_refused(argv, phrase, tmp_path, capsys)


def test_evaluate_prints_the_protocol_table_for_each_field(
    field: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    points = _labels(40)
    points["label"] = points["cover"]
    points["split"] = np.where(points["tile"] == str(TILES[1]), "test", "train")  # a whole tile held out
    points.to_file(tmp_path / "points.geojson")
    argv = ["evaluate", "--points", str(tmp_path / "points.geojson"), "--fields", str(field)]
    assert main([*argv, "--json", str(tmp_path / "eval.json")]) == 0
    printed = capsys.readouterr().out
    assert "1-NN          max" in printed
    assert "untrained encoder" in printed
    assert "no raw-pixel baseline" in printed
    report = json.loads((tmp_path / "eval.json").read_text())
    assert report["n_test"] == 40
    cells = [row["cells"] for row in report["rows"] if row["labels_per_class"] == "max"]
    assert all(cell["value"] > 0.95 for row in cells for cell in row.values())  # stripes are easy
    assert main([*argv, "--labels-per-class", "0,max"]) == 2
    assert "--labels-per-class '0,max'" in capsys.readouterr().err
    assert main([*argv, "--property", "colour"]) == 2
    assert "has no column 'colour'" in capsys.readouterr().err


def test_a_field_with_no_finished_tile_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    empty = tmp_path / "empty.zarr"
    create_store(empty, TILES[:1], [YEAR], LAYOUT)  # planned, nothing written yet
    finalize(empty)
    _labels(12).to_file(tmp_path / "labels.geojson")
    for argv in (
        ["classify", str(empty), "--labels", str(tmp_path / "labels.geojson"), "--property", "cover"],
        ["sample", str(empty), "--points", str(tmp_path / "labels.geojson")],
    ):
        assert main([*argv, "--out", str(tmp_path / "out.tif")]) == 2
        assert "has no finished tile for 2022: run `aef-pipeline run` over the area first" in capsys.readouterr().err
    assert not (tmp_path / "out.tif").exists()


def test_a_mosaic_puts_every_zone_on_one_grid(field: Path, tmp_path: Path) -> None:
    labels = tmp_path / "labels.geojson"
    _labels(40).to_file(labels)
    out = tmp_path / "mosaic.tif"
    argv = ["classify", str(field), "--labels", str(labels), "--property", "cover", "--out", str(out)]
    assert main([*argv, "--crs", "EPSG:32633"]) == 0
    assert not list(tmp_path.glob("mosaic_*.tif"))  # one file, not one per zone
    opened = rioxarray.open_rasterio(out)
    assert isinstance(opened, xr.DataArray)
    assert opened.rio.crs.to_epsg() == 32633
    # The 34N tile's pixels, reprojected into 33N's grid, keep their classes.
    tile = TILES[2]
    for row, col in ((100, 40), (200, 80), (300, 300)):
        lon, lat = _lonlat(tile, row, col)
        x, y = Transformer.from_crs(4326, 32633, always_xy=True).transform(lon, lat)
        value = int(opened.isel(band=0).sel(x=x, y=y, method="nearest"))
        assert value == 1 + (col // STRIPE_PX) % 2, (row, col)


def test_evaluate_reads_the_evaluation_suite_table_format(
    field: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The paper's public suite: x, y (EPSG:4326), label, valid and support times in ms, split."""
    points = _labels(30)
    year_ms = [int(dt.datetime(y, 1, 1, tzinfo=dt.UTC).timestamp() * 1000) for y in (2022, 2023, 2024)]
    table = pd.DataFrame(
        {
            "x": points.geometry.x,
            "y": points.geometry.y,
            "label": points["cover"],
            "valid_time_start_ms": year_ms[0],
            "valid_time_end_ms": year_ms[1],
            "support_time_start_ms": year_ms[0],
            "support_time_end_ms": year_ms[1],
            "split": np.where(points["tile"] == str(TILES[1]), "test", "train"),
        }
    )
    table.loc[:4, ["valid_time_start_ms", "valid_time_end_ms"]] = year_ms[1:]  # 5 rows of 2023: left out
    table.to_csv(tmp_path / "suite.csv", index=False)
    json_path = tmp_path / "eval.json"
    argv = ["evaluate", "--points", str(tmp_path / "suite.csv"), "--fields", str(field), "--json", str(json_path)]
    assert main(argv) == 0
    report = json.loads(json_path.read_text())
    assert report["left_out_outside_period"] == 5
    assert report["points"] == len(table) - 5
    assert "3-NN" in capsys.readouterr().out


def test_evaluate_refuses_rows_without_a_label(field: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    points = _labels(12)
    points["label"] = points["cover"].astype(object)
    points.loc[2, "label"] = None  # a blank cell of a CSV: not a class, and not a crash in np.unique
    points.to_file(tmp_path / "points.geojson")
    assert main(["evaluate", "--points", str(tmp_path / "points.geojson"), "--fields", str(field)]) == 2
    assert "1 rows have no 'label' (e.g. row 2): drop or label them" in capsys.readouterr().err


def test_a_polygon_read_in_small_blocks_gives_the_same_mean(field: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import aef_pipeline.maps.sample as sample_module

    tile = TILES[0]
    west, south = _lonlat(tile, 120.3, 39.7)
    east, north = _lonlat(tile, 99.7, 60.3)
    polygon = gpd.GeoDataFrame(geometry=[box(west, south, east, north)], crs="EPSG:4326")
    whole = sample_field(field, polygon)
    monkeypatch.setattr(sample_module, "POLYGON_BLOCK_PX", 7)  # 3 x 3 blocks, edges inside the polygon
    blocks = sample_field(field, polygon)
    np.testing.assert_allclose(blocks.vectors(), whole.vectors(), atol=1e-6)
    assert blocks.table["pixels"].iloc[0] == whole.table["pixels"].iloc[0]
