"""Time of the overview step for one whole tile: all levels of a 1920 px int8 tile.

    python benchmarks/overview_step.py [--repeats 5]

Random unit vectors (quantised as the store keeps them) with a nodata corner, 40 observations per
pixel; prints the median wall time of `overviews.overview_blocks` (what `write_tile` adds per tile).
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from aef_pipeline.grid import EMBEDDING_DIM, TILE_PIXELS
from aef_pipeline.overviews import OVERVIEW_LEVELS, overview_blocks
from aef_pipeline.quantisation import quantise


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    vectors = np.random.default_rng(0).normal(size=(TILE_PIXELS, TILE_PIXELS, EMBEDDING_DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=-1, keepdims=True)
    vectors[:100, :300] = np.nan  # a corner without data
    values, observations = quantise(vectors), np.full((TILE_PIXELS, TILE_PIXELS), 40, np.int16)
    seconds = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        overview_blocks(values, observations, OVERVIEW_LEVELS)
        seconds.append(time.perf_counter() - start)
    print(
        f"overview_blocks, one whole int8 tile, {OVERVIEW_LEVELS} levels: median {statistics.median(seconds):.2f} s "
        f"of {args.repeats} (min {min(seconds):.2f}, max {max(seconds):.2f})"
    )


if __name__ == "__main__":
    main()
