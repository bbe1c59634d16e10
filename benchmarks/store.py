"""Disk use of the embedding store per pixel-year, and write/read speed, for one 1920 px tile.

    python benchmarks/store.py [--storage int8]

Two fields bound what real embeddings cost: random unit vectors (no spatial structure, the worst
case for compression) and smoothly varying ones (the best case). Prints bytes per pixel-year of
the whole store directory (metadata and records included) and the write and read times.
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import xarray as xr

from aef_pipeline.grid import TILE_PIXELS, TileId
from aef_pipeline.plan import Period
from aef_pipeline.store import StoreLayout, create_store, finalize, open_embeddings, write_tile

TILE = TileId(33, "N", 26, 266)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--storage", default="int8", choices=["int8", "float16", "float32"])
    storage = parser.parse_args().storage
    warnings.simplefilter("ignore")
    for name, vectors in (("random", _random()), ("smooth", _smooth())):
        path = Path(tempfile.mkdtemp(prefix="aef-store-")) / "field.zarr"
        create_store(path, [TILE], [Period.year(2022)], StoreLayout("tiny", "untrained: benchmark", storage))
        field = xr.Dataset(
            {"embedding": (("dim", "y", "x"), vectors), "observations": (("y", "x"), np.full(vectors.shape[1:], 9))},
            coords={"y": TILE.geobox.coordinates["y"].values, "x": TILE.geobox.coordinates["x"].values},
        )
        start = time.perf_counter()
        write_tile(path, TILE, Period.year(2022), field, {"scenes": []})
        finalize(path)
        written = time.perf_counter() - start
        start = time.perf_counter()
        open_embeddings(path).embedding.load()
        read = time.perf_counter() - start
        size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
        print(
            f"{storage} {name}: {size / TILE_PIXELS**2:.1f} B per pixel-year, write {written:.1f} s, "
            f"read+dequantise {read:.1f} s"
        )


def _random() -> np.ndarray:
    vectors = np.random.default_rng(0).normal(size=(64, TILE_PIXELS, TILE_PIXELS)).astype(np.float32)
    unit: np.ndarray = vectors / np.linalg.norm(vectors, axis=0, keepdims=True)
    return unit


def _smooth() -> np.ndarray:
    basis = np.random.default_rng(1).normal(size=(64, 3)).astype(np.float32)
    rows, cols = np.meshgrid(np.linspace(0, 3, TILE_PIXELS), np.linspace(0, 3, TILE_PIXELS), indexing="ij")
    vectors = np.tensordot(basis, np.stack([np.sin(rows), np.cos(cols), np.ones_like(rows)]).astype(np.float32), 1)
    unit: np.ndarray = vectors / np.linalg.norm(vectors, axis=0, keepdims=True)
    return unit


if __name__ == "__main__":
    main()
