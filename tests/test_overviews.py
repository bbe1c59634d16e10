"""Overviews (issue 19): each level is the re-normalised mean of the pixels under it, one tile's
block of a level is whole shards, a quicklook reads only the level it needs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import xarray as xr
import zarr
from affine import Affine
from shapely.geometry import Point

from aef_pipeline.cli import main
from aef_pipeline.errors import UserInputError
from aef_pipeline.grid import TILE_PIXELS, TileId
from aef_pipeline.overviews import (
    MULTISCALES_CONVENTION,
    OVERVIEW_LEVELS,
    _level_one_sums,
    _sum_2x2,
    _valid_box,
    overview_blocks,
    overview_group,
)
from aef_pipeline.plan import Period
from aef_pipeline.quantisation import NODATA_INT8, quantise
from aef_pipeline.store import (
    create_store,
    finalize,
    open_embeddings,
    tile_region,
    write_tile,
    zone_attrs,
)
from aef_pipeline.verify import verify_store
from aef_pipeline.views.quicklook import quicklook
from tests.test_maps import _lonlat
from tests.test_store import LAYOUT, RECORD, TILES, _window

YEAR = Period.year(2022)
SIZE = 256  # px of each tile written: a window is enough, and quick


@pytest.fixture(scope="module")
def one_tile(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("overviews") / "field.zarr"
    create_store(path, TILES[:1], [YEAR], LAYOUT)
    write_tile(path, TILES[0], YEAR, _window(TILES[0], 1, SIZE), RECORD)
    finalize(path)
    return path


def _reference(full: np.ndarray, factor: int) -> np.ndarray:
    """The re-normalised mean of the valid (y, x, band) vectors over factor x factor blocks."""
    rows, cols, bands = full.shape
    blocks = full.reshape(rows // factor, factor, cols // factor, factor, bands)
    with np.errstate(invalid="ignore"):
        mean = np.nanmean(blocks, axis=(1, 3))
        unit: np.ndarray = mean / np.linalg.norm(mean, axis=-1, keepdims=True)
    return unit


@pytest.fixture(scope="module")
def written(one_tile: Path) -> xr.Dataset:
    """Level 0 of the written window (SIZE px, a multiple of the coarsest block), in memory."""
    return open_embeddings(one_tile).isel(time=0, y=slice(0, SIZE), x=slice(0, SIZE)).load()


@pytest.mark.filterwarnings("ignore:Mean of empty slice:RuntimeWarning")
@pytest.mark.parametrize("level", range(1, OVERVIEW_LEVELS + 1))
def test_each_level_is_the_renormalised_mean_of_the_pixels_it_covers(
    one_tile: Path, written: xr.Dataset, level: int
) -> None:
    factor, part = 2**level, SIZE // 2**level
    coarse = open_embeddings(one_tile, level=level).isel(time=0)
    assert coarse.sizes["y"] == coarse.sizes["x"] == TILE_PIXELS // factor
    got = coarse.embedding.transpose("y", "x", "band").values
    want = _reference(written.embedding.transpose("y", "x", "band").values, factor)
    assert np.array_equal(np.isnan(got[:part, :part]), np.isnan(want))  # nodata: the blocks with no valid pixel
    assert np.nanmax(np.abs(got[:part, :part] - want)) <= 0.0079  # the int8 rounding of the overview itself
    # The 16 px nodata corner: nodata up to 16 x 16 blocks, a mean of the rest beyond.
    assert np.isnan(got[0, 0]).all() == (factor <= 16)
    assert np.isnan(got[part:]).all()  # never written: nodata
    assert np.isnan(got[:, part:]).all()
    counts = open_embeddings(one_tile, level=level, as_stored=True).observations.isel(time=0).values
    plain = written.observations.values.astype(np.int64)
    assert np.array_equal(counts[:part, :part], plain.reshape(part, factor, part, factor).sum(axis=(1, 3)))
    assert not counts[part:].any()
    # Pixel centres of the coarse grid: the mean of the centres under each pixel, same CRS.
    assert np.allclose(coarse.x.values[:part], written.x.values.reshape(-1, factor).mean(axis=1))
    assert np.allclose(coarse.y.values[:part], written.y.values.reshape(-1, factor).mean(axis=1))
    assert coarse.rio.crs == written.rio.crs
    assert coarse.rio.transform() == written.rio.transform() * Affine.scale(factor)


def test_a_level_opens_a_bbox_like_level_zero(one_tile: Path) -> None:
    box = TILES[0].geobox.extent.to_crs("EPSG:4326").boundingbox
    bbox = (box.left + 0.01, box.bottom + 0.01, box.left + 0.03, box.top - 0.01)
    fine, coarse = open_embeddings(one_tile, bbox=bbox), open_embeddings(one_tile, bbox=bbox, level=3)
    # The coarse pixels touching the region: they cover it, and overhang it by less than one pixel.
    assert coarse.x.values[0] - 40 <= fine.x.values[0] - 5 < coarse.x.values[0] + 40
    assert coarse.x.values[-1] - 40 < fine.x.values[-1] + 5 <= coarse.x.values[-1] + 40
    assert coarse.y.values[0] + 40 >= fine.y.values[0] + 5 > coarse.y.values[0] - 40
    assert coarse.embedding.dtype == np.float32
    assert coarse.attrs["aef:overview_factor"] == 8


def test_the_pyramid_follows_the_multiscales_convention_and_each_tile_is_whole_shards(one_tile: Path) -> None:
    attrs = zone_attrs(one_tile, "33N") or {}
    assert dict(MULTISCALES_CONVENTION) in attrs["zarr_conventions"]
    layout = attrs["multiscales"]["layout"]
    assert [entry["asset"] for entry in layout] == [
        "embedding",
        *(f"overviews/{k}/embedding" for k in range(1, OVERVIEW_LEVELS + 1)),
    ]
    for level, entry in enumerate(layout):
        array = zarr.open_array(str(one_tile / "33N" / entry["asset"]), mode="r")
        assert list(array.shape[1:3]) == entry["spatial:shape"]
        assert entry["spatial:transform"][0] == 10.0 * 2**level
        if level:
            assert entry["derived_from"] == layout[level - 1]["asset"]
            assert entry["transform"]["scale"] == [2.0, 2.0]
            group_attrs = zone_attrs(one_tile, overview_group("33N", level)) or {}
            assert group_attrs["spatial:transform"] == entry["spatial:transform"]
        # One tile-period's block of the level is exactly one shard, on shard boundaries, of whole chunks.
        block = TILE_PIXELS // 2**level
        assert array.shards == (1, block, block, 64)
        assert block % array.chunks[1] == 0
        for tile in (TILES[0], TileId(33, "N", 8, 0), TileId(33, "N", 43, 485)):
            rows, cols = tile_region(tile, attrs["aef:tiles"])
            assert rows.start % 2**level == 0
            assert (rows.start // 2**level) % block == 0
            assert (cols.start // 2**level) % block == 0


def test_a_level_the_store_lacks_is_refused(one_tile: Path) -> None:
    with pytest.raises(UserInputError, match=f"levels 0-{OVERVIEW_LEVELS}: ask for level 0 to 7, not 8"):
        open_embeddings(one_tile, level=8)


@pytest.mark.filterwarnings("ignore:Mean of empty slice:RuntimeWarning")
def test_a_rewrite_and_a_new_period_leave_every_level_right_and_verify_checks_them(tmp_path: Path) -> None:
    path = tmp_path / "field.zarr"
    create_store(path, TILES[:1], [YEAR], LAYOUT)
    write_tile(path, TILES[0], YEAR, _window(TILES[0], 1, SIZE), RECORD)
    write_tile(path, TILES[0], YEAR, _window(TILES[0], 2, 128), RECORD)  # a rerun over part of it
    create_store(path, TILES[:1], [Period.year(2023)], LAYOUT)  # a period appended to every level
    write_tile(path, TILES[0], Period.year(2023), _window(TILES[0], 3, 128), RECORD)
    window = {"y": slice(0, SIZE), "x": slice(0, SIZE)}
    full = open_embeddings(path).isel(window).embedding.transpose("time", "y", "x", "band").values
    coarse = open_embeddings(path, level=2).embedding.transpose("time", "y", "x", "band").values
    assert coarse.shape[0] == 2
    for index in range(2):
        want = _reference(full[index], 4)
        assert np.array_equal(np.isnan(coarse[index, : SIZE // 4, : SIZE // 4]), np.isnan(want))
        assert np.nanmax(np.abs(coarse[index, : SIZE // 4, : SIZE // 4] - want)) <= 0.0079
        assert np.isnan(coarse[index, SIZE // 4 :]).all()
    assert verify_store(path).ok  # records and levels (metadata and STAC are for finalised stores)
    level = zarr.open_array(str(path / overview_group("33N", 3) / "embedding"), mode="r+")
    rows, cols = tile_region(TILES[0], (zone_attrs(path, "33N") or {})["aef:tiles"])
    level[0, rows.start // 8, cols.start // 8, :] = 0  # an overview no longer matching its level 0
    problems = verify_store(path).problems
    assert problems == [f"{TILES[0]} period 0: overview level 3 does not match level 0"], problems


@pytest.fixture
def four_tiles(tmp_path: Path) -> Path:
    """A 2 x 2 field of tiles, each a small window."""
    tiles = [*TILES, TileId(33, "N", 26, 265), TileId(33, "N", 27, 265)]
    path = tmp_path / "field.zarr"
    create_store(path, tiles, [YEAR], LAYOUT)
    for seed, tile in enumerate(tiles):
        write_tile(path, tile, YEAR, _window(tile, seed, 128), RECORD)
    finalize(path)
    return path


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The files (store root / key) every zarr read asks a local store for, in order."""
    keys: list[str] = []
    original = zarr.storage.LocalStore.get

    async def counted(self: Any, key: str, *args: Any, **kwargs: Any) -> Any:
        keys.append(f"{self.root}/{key}")
        return await original(self, key, *args, **kwargs)

    monkeypatch.setattr(zarr.storage.LocalStore, "get", counted)
    return keys


def test_a_quicklook_of_four_tiles_reads_only_the_level_it_needs(four_tiles: Path, reads: list[str]) -> None:
    look = quicklook(four_tiles, max_size=64)
    # The written windows span 1920 + 128 px: 64 px need blocks of 32, overview level 5.
    assert look.block_px == 32
    data = [key for key in reads if "/c/" in key]  # chunk keys (metadata is zarr.json)
    pixels = [key for key in data if "/embedding/c/" in key or "/observations/c/" in key]
    assert pixels, "no pixel was read"
    assert all("/33N/overviews/5/embedding/c/" in key for key in pixels), sorted(set(pixels))
    picture = xr.DataArray(look.rgba[..., 3])
    assert 0 < float((picture == 255).mean()) < 1


def test_a_similarity_map_at_a_level_reads_that_level_and_scores_its_vectors(
    one_tile: Path, tmp_path: Path, reads: list[str]
) -> None:
    gpd.GeoDataFrame(geometry=[Point(*_lonlat(TILES[0], 100, 40))], crs="EPSG:4326").to_file(tmp_path / "refs.geojson")
    out = tmp_path / "sim.tif"
    assert (
        main(
            ["similarity", str(one_tile), "--points", str(tmp_path / "refs.geojson"), "--out", str(out), "--level", "3"]
        )
        == 0
    )
    pixels = [key for key in reads if "/embedding/c/" in key or "/observations/c/" in key]
    coarse = [key for key in pixels if "/overviews/" in key]
    assert coarse
    assert all("/33N/overviews/3/" in key for key in coarse), sorted(set(coarse))
    # Level 0 only for the reference: its tile's shard of each array (index and one inner chunk).
    rows, cols = tile_region(TILES[0], (zone_attrs(one_tile, "33N") or {})["aef:tiles"])
    shard = f"0/{rows.start // TILE_PIXELS}/{cols.start // TILE_PIXELS}"
    fine = [key for key in pixels if "/overviews/" not in key]
    assert set(fine) == {f"{one_tile}/33N/embedding/c/{shard}/0", f"{one_tile}/33N/observations/c/{shard}"}
    assert len(fine) <= 4
    # The map is the dot product of the level's vectors with the reference's full-resolution vector.
    reference = open_embeddings(one_tile).embedding.isel(time=0, y=100, x=40).values
    level = open_embeddings(one_tile, level=3).isel(time=0, y=slice(0, SIZE // 8), x=slice(0, SIZE // 8))
    want = level.embedding.transpose("y", "x", "band").values @ reference
    with rasterio.open(out) as raster:
        score, transform = raster.read(1), raster.transform
    assert transform == level.rio.transform(recalc=True)
    assert np.array_equal(np.isnan(score), np.isnan(want))
    assert np.nanmax(np.abs(score - want)) < 1e-6


def test_the_levels_do_not_depend_on_how_level_0_lies_in_memory() -> None:
    """`write_tile` computes the levels from a whole tile quantised straight from its (dim, y, x)
    field (band-major in memory); `verify` recomputes them from the shard read back (pixel-major).
    Float sums depend on the order of their terms: both must add in the same order."""
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((64, 256, 256), dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=0, keepdims=True)
    as_written = quantise(vectors.transpose(1, 2, 0))
    assert not as_written.flags.c_contiguous
    counts = np.full((256, 256), 3, np.int16)
    written = overview_blocks(as_written, counts, OVERVIEW_LEVELS)
    read_back = overview_blocks(np.ascontiguousarray(as_written), counts, OVERVIEW_LEVELS)
    for (got, _), (want, _) in zip(written, read_back, strict=True):
        assert np.array_equal(got, want)


def _whole_box_blocks(values: np.ndarray, observations: np.ndarray, levels: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """`overview_blocks` as it was before it went strip by strip (issue 20): the whole box's sums
    at once, each level normalised 64 rows at a time. Stores written then must still verify."""
    valid = values[..., 0] != NODATA_INT8 if values.dtype == np.int8 else np.isfinite(values[..., 0])
    r0, r1, c0, c1 = _valid_box(valid, 2**levels)
    sums = _level_one_sums(values[r0:r1, c0:c1], valid[r0:r1, c0:c1])
    weights, counts = _sum_2x2(valid[r0:r1, c0:c1].astype(np.int32)), _sum_2x2(observations.astype(np.int32))
    blocks = []
    for level in range(1, levels + 1):
        if level > 1:
            sums, weights, counts = _sum_2x2(sums), _sum_2x2(weights), _sum_2x2(counts)
        factor = 2**level
        block = np.full((len(values) // factor, values.shape[1] // factor, 64), NODATA_INT8, values.dtype)
        if values.dtype != np.int8:
            block[...] = np.nan
        out = block[r0 // factor : r1 // factor, c0 // factor : c1 // factor]
        for row in range(0, len(sums), 64):
            part = sums[row : row + 64]
            norms = np.sqrt((part.astype(np.float64) ** 2).sum(axis=-1, keepdims=True))
            with np.errstate(invalid="ignore", divide="ignore"):
                vectors = (part / norms).astype(np.float32)
            vectors[~((weights[row : row + 64, :, None] > 0) & (norms > 0))[..., 0]] = np.nan
            out[row : row + 64] = quantise(vectors) if out.dtype == np.int8 else vectors
        blocks.append((block, counts))
    return blocks


@pytest.mark.parametrize("storage", ["int8", "float16"])
def test_the_levels_do_not_depend_on_the_strips_they_are_computed_in(storage: str) -> None:
    """The levels are computed OVERVIEW_STRIP_PX rows of level 0 at a time (a whole tile's sums
    would be 236 MB); every pixel must get the bits the whole box at once gave, so that stores
    written before still verify. Five strips of a block of tiles' worth of pixels (640 x 512 px),
    all of it, windows of it and data in odd places."""
    rng = np.random.default_rng(1)
    vectors = rng.standard_normal((640, 512, 64), dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=-1, keepdims=True)
    vectors[:100, :200] = np.nan  # a corner without data
    vectors[300:301, 5:500:7] = np.nan  # scattered nodata pixels
    full = quantise(vectors) if storage == "int8" else vectors.astype(storage)
    nodata = np.full_like(full, NODATA_INT8 if storage == "int8" else np.nan)
    counts = rng.integers(0, 50, (640, 512), dtype=np.int16)
    windows = [(0, 640, 0, 512), (520, 640, 0, 120), (130, 390, 200, 480), (0, 0, 0, 0)]
    for r0, r1, c0, c1 in windows:
        values = nodata.copy()
        values[r0:r1, c0:c1] = full[r0:r1, c0:c1]
        for levels in (OVERVIEW_LEVELS, 3):
            got, want = overview_blocks(values, counts, levels), _whole_box_blocks(values, counts, levels)
            assert len(got) == len(want) == levels
            for (block, summed), (want_block, want_summed) in zip(got, want, strict=True):
                assert block.tobytes() == want_block.tobytes(), ((r0, r1, c0, c1), levels)
                assert np.array_equal(summed, want_summed)
