"""The Zarr embedding store: quantisation, grid, concurrent writers, appending years, bad stores."""

from __future__ import annotations

import functools
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pystac
import pytest
import xarray as xr

from aef_pipeline.catalog import write_stac
from aef_pipeline.errors import UserInputError
from aef_pipeline.grid import TILE_PIXELS, TileId
from aef_pipeline.plan import Period
from aef_pipeline.store import (
    NODATA_INT8,
    StoreLayout,
    create_store,
    dequantise,
    finalize,
    finished,
    open_embeddings,
    quantise,
    read_record,
    unfinished,
    write_tile,
)

TILES = [TileId(33, "N", 26, 266), TileId(33, "N", 27, 266)]
LAYOUT = StoreLayout("tiny", "untrained: deterministic initialisation from seed 0")


@functools.lru_cache(maxsize=4)
def _field(tile: TileId, seed: int) -> xr.Dataset:
    """Unit vectors varying smoothly over the tile, a nodata corner, and observation counts."""
    rng = np.random.default_rng(seed)
    basis = rng.normal(size=(64, 3)).astype(np.float32)
    rows, cols = np.meshgrid(np.linspace(0, 3, TILE_PIXELS), np.linspace(0, 3, TILE_PIXELS), indexing="ij")
    weights = np.stack([np.sin(rows), np.cos(cols), np.ones_like(rows)]).astype(np.float32)
    vectors = np.tensordot(basis, weights, axes=1)
    vectors /= np.linalg.norm(vectors, axis=0, keepdims=True)
    vectors[:, :16, :16] = np.nan
    observations = np.full((TILE_PIXELS, TILE_PIXELS), seed + 5, np.int16)
    observations[:16, :16] = 0
    coords = {"y": tile.geobox.coordinates["y"].values, "x": tile.geobox.coordinates["x"].values}
    return xr.Dataset(
        {"embedding": (("dim", "y", "x"), vectors), "observations": (("y", "x"), observations)}, coords=coords
    )


def _write(path: Path, tile: TileId, year: int, seed: int) -> None:
    write_tile(path, tile, Period.year(year), _field(tile, seed), {"scenes": [f"scene-{seed}"]})


def test_quantisation_round_trip_and_nodata() -> None:
    x = np.concatenate([np.linspace(-1, 1, 20001, dtype=np.float32), [np.nan]])
    back = dequantise(quantise(x))
    assert np.nanmax(np.abs(back - x)) <= 0.0079
    assert np.isnan(back[-1])
    assert quantise(np.array([np.nan]))[0] == NODATA_INT8
    assert not np.isclose(back[:-1], -1.0079, atol=1e-4).any()


def test_store_round_trip_grid_and_records(tmp_path: Path) -> None:
    path = tmp_path / "field.zarr"
    create_store(path, TILES, [Period.year(2022)], LAYOUT)
    assert not finished(path, TILES[0], Period.year(2022))
    _write(path, TILES[0], 2022, seed=1)
    assert finished(path, TILES[0], Period.year(2022))
    assert read_record(path, TILES[0], Period.year(2022))["scenes"] == ["scene-1"]
    finalize(path)
    ds = open_embeddings(path)
    tile = ds.isel(time=0).sel(
        x=slice(TILES[0].geobox.extent.boundingbox.left, TILES[0].geobox.extent.boundingbox.right)
    )
    got = tile.embedding.transpose("band", "y", "x").values
    want = _field(TILES[0], 1).embedding.values
    assert np.nanmax(np.abs(got - want)) <= 0.0079
    norms = np.linalg.norm(got, axis=0)
    assert np.nanmax(np.abs(norms - 1)) <= 0.02
    assert np.isnan(got[:, :16, :16]).all()
    assert np.isnan(ds.embedding.isel(time=0).sel(x=slice(TILES[1].geobox.extent.boundingbox.left, None))[:5, :5]).all()
    assert ds.rio.crs.to_epsg() == 32633
    assert ds.rio.transform() == TILES[0].geobox.affine
    assert list(ds.band.values[:2]) == ["A00", "A01"]
    assert ds.attrs["aef:model_weights"].startswith("untrained")
    plain = xr.open_zarr(path, group="33N", decode_coords="all")
    assert plain.embedding.dtype == np.int8
    assert "spatial_ref" in plain.coords


def test_two_processes_write_two_tiles_of_one_store(tmp_path: Path) -> None:
    path = tmp_path / "field.zarr"
    create_store(path, TILES, [Period.year(2022)], LAYOUT)
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
        list(pool.map(_write, [path, path], TILES, [2022, 2022], [1, 2]))
    ds = open_embeddings(path).isel(time=0)
    for tile, seed in zip(TILES, (1, 2), strict=True):
        box = tile.geobox.extent.boundingbox
        got = ds.sel(x=slice(box.left, box.right)).embedding.transpose("band", "y", "x").values
        assert np.nanmax(np.abs(got - _field(tile, seed).embedding.values)) <= 0.0079
        assert (ds.sel(x=slice(box.left, box.right)).observations.values[16:, 16:] == seed + 5).all()


def test_adding_a_year_keeps_what_was_there(tmp_path: Path) -> None:
    path = tmp_path / "field.zarr"
    create_store(path, TILES[:1], [Period.year(2022)], LAYOUT)
    _write(path, TILES[0], 2022, seed=1)
    create_store(path, TILES[:1], [Period.year(2023)], LAYOUT)
    _write(path, TILES[0], 2023, seed=2)
    ds = open_embeddings(path)
    assert [str(t)[:4] for t in ds.time.values] == ["2022", "2023"]
    assert str(ds.time_end.values[0])[:10] == "2023-01-01"
    for year, seed in ((2022, 1), (2023, 2)):
        got = ds.sel(time=f"{year}-01-01").embedding.transpose("band", "y", "x").values
        assert np.nanmax(np.abs(got - _field(TILES[0], seed).embedding.values)) <= 0.0079


def test_a_store_of_another_model_or_area_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "field.zarr"
    create_store(path, TILES[:1], [Period.year(2022)], LAYOUT)
    other = StoreLayout("paper", LAYOUT.model_weights)
    with pytest.raises(UserInputError, match="was made with model 'tiny', this run uses 'paper': write to a new path"):
        create_store(path, TILES[:1], [Period.year(2022)], other)
    with pytest.raises(UserInputError, match="does not cover tiles 33N_c027_r0266"):
        create_store(path, TILES, [Period.year(2022)], LAYOUT)
    create_store(path, TILES, [Period.year(2022)], other, overwrite=True)
    assert open_embeddings(path).attrs["aef:model"] == "paper"


def test_unwritable_paths_are_refused(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(UserInputError, match="exists and is not a directory"):
        create_store(blocker, TILES, [Period.year(2022)], LAYOUT)
    with pytest.raises(UserInputError, match="cannot create"):
        create_store(blocker / "sub" / "f.zarr", TILES, [Period.year(2022)], LAYOUT)


def test_float_storage(tmp_path: Path) -> None:
    path = tmp_path / "field.zarr"
    create_store(path, TILES[:1], [Period.year(2022)], StoreLayout("tiny", LAYOUT.model_weights, storage="float16"))
    _write(path, TILES[0], 2022, seed=3)
    got = open_embeddings(path).isel(time=0).embedding.transpose("band", "y", "x").values
    assert np.nanmax(np.abs(got - _field(TILES[0], 3).embedding.values)) <= 1e-3
    assert np.isnan(got[:, :16, :16]).all()


def test_a_crash_leaves_exactly_the_unfinished_tiles(tmp_path: Path) -> None:
    path = tmp_path / "field.zarr"
    periods = [Period.year(2022), Period.year(2023)]
    create_store(path, TILES, periods, LAYOUT)
    _write(path, TILES[1], 2023, seed=2)
    # A task killed mid-write: data partly there, no record.
    data = _field(TILES[0], 1).isel(y=slice(0, 128))
    rows = slice(0, 128)
    values = quantise(data.embedding.transpose("y", "x", "dim").values[None])
    xr.Dataset({"embedding": (("time", "y", "x", "band"), values)}).to_zarr(
        path,
        group="33N",
        region={"time": slice(0, 1), "y": rows, "x": slice(0, TILE_PIXELS)},
        mode="r+",
        consolidated=False,
    )
    todo = unfinished(path, TILES, periods)
    assert todo == [(TILES[0], periods[0]), (TILES[0], periods[1]), (TILES[1], periods[0])]


def test_stac_catalog_describes_the_store(tmp_path: Path) -> None:
    path = tmp_path / "field.zarr"
    create_store(path, TILES, [Period.year(2022), Period.year(2023)], LAYOUT)
    finalize(path)
    collection_path = write_stac(path)
    assert collection_path == tmp_path / "field.stac" / "collection.json"
    collection = pystac.Collection.from_file(str(collection_path))
    items = sorted(collection.get_items(), key=lambda item: item.id)
    assert [item.id for item in items] == ["33N_20220101_20230101", "33N_20230101_20240101"]
    assert items[0].properties["proj:code"] == "EPSG:32633"
    assert items[0].properties["aef:trained"] is False
    assert Path(items[0].assets["embeddings"].get_absolute_href() or "") == path / "33N"
    tree = xr.open_datatree(path, engine="zarr")  # plain xarray sees the zone groups, nothing else
    assert list(tree.children) == ["33N"]
    import aef_pipeline

    assert aef_pipeline.open_embeddings(path).sizes["time"] == 2


def test_stac_catalog_of_a_relative_store_path_stays_beside_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    create_store(Path("field.zarr"), TILES, [Period.year(2022)], LAYOUT)
    finalize(Path("field.zarr"))
    write_stac(Path("field.zarr"))
    assert sorted(p.name for p in (tmp_path / "work").iterdir()) == ["field.stac", "field.zarr"]
    assert (tmp_path / "work" / "field.stac" / "collection.json").is_file()
