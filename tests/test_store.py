"""The Zarr embedding store: quantisation, grid, concurrent writers, appending years, bad stores."""

from __future__ import annotations

import datetime as dt
import functools
import json
import multiprocessing
import shutil
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pystac
import pytest
import xarray as xr
from affine import Affine

from aef_pipeline.catalog import write_stac
from aef_pipeline.cli import main
from aef_pipeline.errors import UserInputError
from aef_pipeline.grid import TILE_PIXELS, TileId
from aef_pipeline.plan import Period
from aef_pipeline.store import (
    NODATA_INT8,
    StoreLayout,
    create_store,
    dequantise,
    describe_store,
    finalize,
    finished,
    open_embeddings,
    planned_tiles,
    quantise,
    read_record,
    unfinished,
    write_tile,
    written_tiles,
    zone_attrs,
)
from aef_pipeline.testing.stores import assert_same_stores, older_layout_store
from aef_pipeline.verify import verify_store

TILES = [TileId(33, "N", 26, 266), TileId(33, "N", 27, 266)]
LAYOUT = StoreLayout("tiny", "untrained: deterministic initialisation from seed 0")
RECORD = {"scenes": [], "model": LAYOUT.model, "model_weights": LAYOUT.model_weights}


@functools.lru_cache(maxsize=8)
def _field(tile: TileId, seed: int, size: int = TILE_PIXELS) -> xr.Dataset:
    """Unit vectors varying smoothly over the tile, a nodata corner, and observation counts: the
    whole tile, or its top-left `size` px (a task's window, quick to make and write)."""
    rng = np.random.default_rng(seed)
    basis = rng.normal(size=(64, 3)).astype(np.float32)
    steps = np.linspace(0, 3, TILE_PIXELS)[:size]
    rows, cols = np.meshgrid(steps, steps, indexing="ij")
    weights = np.stack([np.sin(rows), np.cos(cols), np.ones_like(rows)]).astype(np.float32)
    vectors = np.tensordot(basis, weights, axes=1)
    vectors /= np.linalg.norm(vectors, axis=0, keepdims=True)
    vectors[:, :16, :16] = np.nan
    observations = np.full((size, size), seed + 5, np.int16)
    observations[:16, :16] = 0
    coords = {"y": tile.geobox.coordinates["y"].values[:size], "x": tile.geobox.coordinates["x"].values[:size]}
    return xr.Dataset(
        {"embedding": (("dim", "y", "x"), vectors), "observations": (("y", "x"), observations)}, coords=coords
    )


def _write(path: Path, tile: TileId, year: int, seed: int) -> None:
    write_tile(path, tile, Period.year(year), _field(tile, seed), {"scenes": [f"scene-{seed}"]})


def _window(tile: TileId, seed: int, size: int = 128) -> xr.Dataset:
    return _field(tile, seed, size)


WINDOW = 480  # what most tests write of a tile: its top-left quarter (whole tiles take seconds)


def _write_window(path: Path, tile: TileId, year: int, seed: int) -> None:
    write_tile(path, tile, Period.year(year), _window(tile, seed, WINDOW), {"scenes": [f"scene-{seed}"]})


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
        list(pool.map(_write_window, [path, path], TILES, [2022, 2022], [1, 2]))
    ds = open_embeddings(path).isel(time=0)
    for tile, seed in zip(TILES, (1, 2), strict=True):
        box = tile.geobox.extent.boundingbox
        got = ds.sel(x=slice(box.left, box.right)).isel(y=slice(0, WINDOW), x=slice(0, WINDOW))
        want = _window(tile, seed, WINDOW)
        assert np.nanmax(np.abs(got.embedding.transpose("band", "y", "x").values - want.embedding.values)) <= 0.0079
        assert (got.observations.values[16:, 16:] == seed + 5).all()


def test_adding_a_year_keeps_what_was_there(tmp_path: Path) -> None:
    path = tmp_path / "field.zarr"
    create_store(path, TILES[:1], [Period.year(2022)], LAYOUT)
    _write_window(path, TILES[0], 2022, seed=1)
    create_store(path, TILES[:1], [Period.year(2023)], LAYOUT)
    _write_window(path, TILES[0], 2023, seed=2)
    ds = open_embeddings(path).isel(y=slice(0, WINDOW), x=slice(0, WINDOW))
    assert [str(t)[:4] for t in ds.time.values] == ["2022", "2023"]
    assert str(ds.time_end.values[0])[:10] == "2023-01-01"
    for year, seed in ((2022, 1), (2023, 2)):
        got = ds.sel(time=f"{year}-01-01").embedding.transpose("band", "y", "x").values
        assert np.nanmax(np.abs(got - _window(TILES[0], seed, WINDOW).embedding.values)) <= 0.0079


def _chunk_files(path: Path) -> dict[Path, tuple[int, bytes]]:
    """Every stored chunk of the zone groups' data and records, with its mtime and bytes."""
    names = ("embedding", "observations", "tile_record")
    return {
        f: (f.stat().st_mtime_ns, f.read_bytes())
        for name in names
        for f in path.glob(f"*/{name}/c/**/*")
        if f.is_file()
    }


def test_a_store_takes_any_tile_of_its_zone_and_keeps_what_was_there(tmp_path: Path) -> None:
    path, year = tmp_path / "field.zarr", Period.year(2022)
    far = TileId(33, "N", 40, 300)  # 265 km east and 650 km north of the first tile
    create_store(path, TILES[:1], [year], LAYOUT)
    write_tile(path, TILES[0], year, _window(TILES[0], 1), RECORD)
    first = _chunk_files(path)
    assert first
    for tile, seed in ((TILES[1], 2), (far, 3)):
        create_store(path, [tile], [year], LAYOUT)
        write_tile(path, tile, year, _window(tile, seed), RECORD)
    after = _chunk_files(path)
    assert {f: after[f] for f in first} == first  # not one byte of the first tile rewritten
    assert written_tiles(path, "33N") == {0: sorted([*TILES, far], key=lambda t: (-t.row, t.col))}
    assert {t for tiles in planned_tiles(path, "33N").values() for t in tiles} == {*TILES, far}
    finalize(path)
    ds = open_embeddings(path)  # the rectangle around what was planned
    assert ds.sizes["x"] == (far.col - TILES[0].col + 1) * TILE_PIXELS
    for tile, seed in ((TILES[0], 1), (TILES[1], 2), (far, 3)):
        box = tile.geobox.extent.boundingbox
        got = ds.isel(time=0).sel(x=slice(box.left, box.right), y=slice(box.top, box.bottom))
        got = got.isel(x=slice(0, 256), y=slice(0, 256)).embedding.transpose("band", "y", "x").values
        assert np.nanmax(np.abs(got[:, :128, :128] - _window(tile, seed).embedding.values)) <= 0.0079
        assert np.isnan(got[:, 128:, 128:]).all()
    described = describe_store(path)
    assert "written extent: tiles c026-c040 x r0266-r0300 (3 tiles" in described
    assert "2022: tile-periods written 3/3 planned" in described


def test_open_embeddings_reads_a_region_with_its_own_coordinates(tmp_path: Path) -> None:
    path, year = tmp_path / "field.zarr", Period.year(2022)
    create_store(path, TILES, [year, Period.year(2023)], LAYOUT)
    write_tile(path, TILES[0], year, _window(TILES[0], 1, size=1920 // 4), RECORD)
    finalize(path)
    whole = open_embeddings(path)
    # A bbox around the first tile's top-left corner: a few hundred metres either way.
    corner = TILES[0].geobox.extent.to_crs("EPSG:4326").boundingbox
    region = open_embeddings(path, bbox=(corner.left - 0.002, corner.top - 0.004, corner.left + 0.004, corner.top))
    assert region.rio.crs.to_epsg() == 32633
    left, top = float(region.x[0]) - 5, float(region.y[0]) + 5
    assert region.rio.transform() == Affine(10, 0, left, 0, -10, top)
    assert left < TILES[0].geobox.extent.boundingbox.left  # the zone's pixels, not only the tiles planned
    xs, ys = np.intersect1d(region.x, whole.x), np.intersect1d(region.y, whole.y)
    inside = region.sel(x=xs, y=ys).embedding.values
    np.testing.assert_array_equal(inside, whole.sel(x=xs, y=ys).embedding.values)
    assert np.isfinite(inside).any()
    assert np.isnan(region.sel(x=region.x[region.x < xs[0]]).embedding.values).all()
    assert all(c % 640 == 0 for c in region.embedding.chunks[2][1:-1])  # dask chunks on the stored grid
    one = open_embeddings(path, period="2022")
    assert one.sizes["time"] == 1
    assert str(one.time.values[0])[:4] == "2022"
    with pytest.raises(UserInputError, match="has no period 2021; it holds 2022, 2023"):
        open_embeddings(path, period="2021")
    with pytest.raises(UserInputError, match=r"lies in zone 47N, which .* does not hold; it holds 33N"):
        open_embeddings(path, bbox=(100.0, 10.0, 100.1, 10.1))


def test_a_store_of_another_model_or_an_overlapping_period_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "field.zarr"
    create_store(path, TILES[:1], [Period.year(2022)], LAYOUT)
    before = sorted((f, f.stat().st_mtime_ns) for f in path.rglob("*"))
    paper, sha = StoreLayout("paper", LAYOUT.model_weights), StoreLayout("tiny", "sha256:0f")
    float16 = StoreLayout("tiny", LAYOUT.model_weights, "float16")
    july = Period(dt.datetime(2022, 7, 1, tzinfo=dt.UTC), dt.datetime(2023, 7, 1, tzinfo=dt.UTC))
    refused = [
        (paper, [Period.year(2022)], "made with model 'tiny', this run uses 'paper'"),
        (sha, [Period.year(2022)], "made with model_weights 'untrained"),
        (float16, [Period.year(2022)], "made with storage 'int8'"),
        (LAYOUT, [Period.year(2024), july], "period 2022-07-01_2023-07-01 overlaps 2022, which .* already holds: a "),
    ]
    for layout, periods, message in refused:
        with pytest.raises(UserInputError, match=message):
            create_store(path, TILES, periods, layout)
    assert sorted((f, f.stat().st_mtime_ns) for f in path.rglob("*")) == before  # nothing written, not even 2024
    create_store(path, TILES, [Period.year(2022)], StoreLayout("paper", LAYOUT.model_weights), overwrite=True)
    assert open_embeddings(path).attrs["aef:model"] == "paper"


def _older_layout_store(path: Path) -> None:
    older_layout_store(path, TILES, [Period.year(2022)], LAYOUT)
    for tile, seed in zip(TILES, (1, 2), strict=True):
        write_tile(path, tile, Period.year(2022), _window(tile, seed), RECORD)
    finalize(path)
    write_stac(path)


def test_an_older_layout_store_is_refused_then_migrated(tmp_path: Path) -> None:
    old, migrated = tmp_path / "old.zarr", tmp_path / "migrated.zarr"
    _older_layout_store(old)
    shutil.copytree(old, migrated)
    new_tile = TileId(33, "N", 28, 266)
    with pytest.raises(UserInputError, match=r"older bbox-extent layout.*run `aef-pipeline migrate .*old.zarr` once"):
        create_store(old, [new_tile], [Period.year(2022)], LAYOUT)
    assert "bbox-extent (older" in describe_store(old)  # still readable as it was
    assert np.isfinite(open_embeddings(old).embedding.isel(y=slice(0, 128), x=slice(0, 128)).values).any()
    assert main(["migrate", str(migrated)]) == 0
    assert_same_stores(old, migrated)  # every written shard where it was, bit for bit
    assert verify_store(migrated).ok
    assert (zone_attrs(migrated, "33N") or {})["aef:layout"] == "zone-wide"
    assert main(["migrate", str(migrated)]) == 0  # twice: nothing left to do
    create_store(migrated, [new_tile], [Period.year(2022)], LAYOUT)
    write_tile(migrated, new_tile, Period.year(2022), _window(new_tile, 3), RECORD)
    assert len(written_tiles(migrated, "33N")[0]) == 3


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
    _write_window(path, TILES[0], 2022, seed=3)
    got = open_embeddings(path).isel(time=0, y=slice(0, WINDOW), x=slice(0, WINDOW))
    got = got.embedding.transpose("band", "y", "x").values
    assert np.nanmax(np.abs(got - _window(TILES[0], 3, WINDOW).embedding.values)) <= 1e-3
    assert np.isnan(got[:, :16, :16]).all()


def test_a_crash_leaves_exactly_the_unfinished_tiles(tmp_path: Path) -> None:
    path = tmp_path / "field.zarr"
    periods = [Period.year(2022), Period.year(2023)]
    create_store(path, TILES, periods, LAYOUT)
    _write_window(path, TILES[1], 2023, seed=2)
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


def test_stac_catalog_describes_what_is_written(tmp_path: Path) -> None:
    path = tmp_path / "field.zarr"
    create_store(path, TILES, [Period.year(2022), Period.year(2023)], LAYOUT)
    finalize(path)
    planned = pystac.Collection.from_file(str(write_stac(path)))
    assert not list(planned.get_items())  # nothing written yet: no Items, the extent of what is planned
    boxes = [TILES[0].geobox.geographic_extent.boundingbox, TILES[1].geobox.geographic_extent.boundingbox]
    union = [
        min(b.left for b in boxes),
        min(b.bottom for b in boxes),
        max(b.right for b in boxes),
        max(b.top for b in boxes),
    ]
    assert planned.extent.spatial.bboxes[0] == pytest.approx(union, abs=1e-5)
    write_tile(path, TILES[0], Period.year(2022), _window(TILES[0], 1), RECORD)
    write_tile(path, TILES[1], Period.year(2022), _window(TILES[1], 2), RECORD)
    write_tile(path, TILES[0], Period.year(2023), _window(TILES[0], 3), RECORD)
    finalize(path)
    collection_path = write_stac(path)
    assert collection_path == tmp_path / "field.stac" / "collection.json"
    collection = pystac.Collection.from_file(str(collection_path))
    items = sorted(collection.get_items(), key=lambda item: item.id)
    assert [item.id for item in items] == ["33N_20220101_20230101", "33N_20230101_20240101"]
    # Each Item outlines the tiles written for its period; the Collection, all of them.
    assert items[0].bbox == pytest.approx(union, abs=1e-5)
    assert items[1].bbox == pytest.approx(list(boxes[0]), abs=1e-5)
    assert items[0].properties["aef:tiles_written"] == 2
    assert collection.extent.spatial.bboxes[0] == pytest.approx(items[0].bbox)
    assert verify_store(path).ok
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


def test_zone_groups_and_stac_carry_the_embeddings_conventions(tmp_path: Path) -> None:
    from aef_pipeline.geoemb import validate_geoemb

    path = tmp_path / "field.zarr"
    create_store(path, TILES[:1], [Period.year(2022)], LAYOUT)
    write_tile(path, TILES[0], Period.year(2022), _window(TILES[0], 1), RECORD)
    finalize(path)
    attrs = zone_attrs(path, "33N") or {}
    assert validate_geoemb(attrs) == []
    assert attrs["geoemb:dimensions"] == 64
    assert attrs["geoemb:quantization"]["method"] == "sign_square"  # not "linear": the int8 trap
    assert "UNTRAINED" in attrs["aef:notice"]
    collection = pystac.Collection.from_file(str(write_stac(path)))
    assert any("embeddings" in uri for uri in collection.stac_extensions)
    (item,) = collection.get_items()
    assert any("embeddings" in uri for uri in item.stac_extensions)
    assert verify_store(path).ok


def test_a_write_cut_off_leaves_no_phantom_record_and_overlapping_requests_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "field.zarr"
    create_store(path, TILES[:1], [Period.year(2022)], LAYOUT)
    write_tile(path, TILES[0], Period.year(2022), _window(TILES[0], 1), RECORD)
    partial = next((path / "33N" / "tile_record" / "c").glob("*/*/*"))
    partial.with_name(partial.name + ".0123abcd.partial").write_text("cut off")  # zarr's temporary name
    assert written_tiles(path, "33N") == {0: [TILES[0]]}
    spring = Period(dt.datetime(2022, 3, 1, tzinfo=dt.UTC), dt.datetime(2022, 9, 1, tzinfo=dt.UTC))
    with pytest.raises(UserInputError, match="periods 2022 and 2022-03-01_2022-09-01 overlap"):
        create_store(tmp_path / "other.zarr", TILES[:1], [Period.year(2022), spring], LAYOUT)
    assert not (tmp_path / "other.zarr").exists()


def test_migrate_refuses_chunks_stored_another_way(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    old = tmp_path / "old.zarr"
    older_layout_store(old, TILES, [Period.year(2022)], LAYOUT)
    metadata_file = old / "33N" / "observations" / "zarr.json"
    metadata = json.loads(metadata_file.read_text())
    metadata["fill_value"] = -1  # e.g. a store written by a version with another fill value
    metadata_file.write_text(json.dumps(metadata))
    before = sorted((f, f.stat().st_mtime_ns) for f in tmp_path.rglob("*"))
    assert main(["migrate", str(old)]) == 2
    assert "observations is stored with another fill_value than this version writes" in capsys.readouterr().err
    assert sorted((f, f.stat().st_mtime_ns) for f in tmp_path.rglob("*")) == before  # untouched, no staging left
