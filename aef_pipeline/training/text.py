"""Optional text alignment: a CLIP loss between the embedding at a place and time and a text vector.

    aef-pipeline train ... --text text.parquet

The paper aligns embeddings with a frozen text model (Wikipedia and GBIF descriptions, weight
0.001). No model is downloaded at run time here: the text vectors are computed beforehand, by
whatever text model the user trusts, and read from a vector file (GeoParquet, GeoPackage,
GeoJSON) of points in any CRS with two columns:

    time     when the text applies: an ISO date/datetime or integer milliseconds since the epoch
    vector   the text's embedding: a list of floats (every row the same length)

A point counts for a training window when it lies inside the window and its time inside the
window's support period; the embedding at its pixel, with the support period's timecode, is mapped
by a small head into the text space, and the rows of a step are each other's negatives.
"""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from pyproj import Transformer

from aef_pipeline.errors import UserInputError
from aef_pipeline.training.trainset import TrainingWindow


@dataclass(frozen=True)
class TextTable:
    """Text vectors at points and times."""

    lon: np.ndarray
    lat: np.ndarray
    t_ms: np.ndarray
    """(N,) int64."""
    vectors: np.ndarray
    """(N, E) float32."""
    sha256: str
    """Of the file: a resumed run must read the same texts."""

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])


@dataclass(frozen=True)
class TextPairs:
    """The texts that fall in a batch's windows: where (window, row, col) and what (vector)."""

    window: torch.Tensor
    row: torch.Tensor
    col: torch.Tensor
    vectors: torch.Tensor


def read_text_table(path: Path) -> TextTable:
    """The file's points, times and vectors; a one-line UserInputError names what is missing."""
    import geopandas as gpd

    if not path.is_file():
        raise UserInputError(f"--text {path} not found: give a GeoParquet/GeoPackage/GeoJSON of points")
    frame = gpd.read_parquet(path) if path.suffix == ".parquet" else gpd.read_file(path)
    missing = [name for name in ("time", "vector") if name not in frame.columns]
    if missing or frame.crs is None or not (frame.geom_type == "Point").all():
        raise UserInputError(
            f"--text {path} needs point geometries with a CRS and the columns time and vector "
            f"(missing: {', '.join(missing) or 'points or CRS'}); see docs/training.md"
        )
    points = frame.to_crs("EPSG:4326").geometry
    return TextTable(
        lon=points.x.to_numpy(),
        lat=points.y.to_numpy(),
        t_ms=_times(frame["time"], path),
        vectors=_vectors(frame["vector"], path),
        sha256=hashlib.sha256(path.read_bytes()).hexdigest(),
    )


def match_texts(table: TextTable, windows: list[TrainingWindow], size: int) -> TextPairs:
    """The texts inside each window (pixel of the point) and its support period."""
    found: list[tuple[int, int, int, int]] = []
    for i, window in enumerate(windows):
        x, y = _from_lon_lat(window.crs).transform(table.lon, table.lat)
        col, row = _pixel(window.transform, np.asarray(x), np.asarray(y))
        start, end = window.period_ms
        inside = (col >= 0) & (col < size) & (row >= 0) & (row < size) & (table.t_ms >= start) & (table.t_ms < end)
        found += [(i, int(row[k]), int(col[k]), int(k)) for k in np.flatnonzero(inside)]
    rows = np.asarray(found, np.int64).reshape(-1, 4)
    return TextPairs(
        window=torch.from_numpy(rows[:, 0]),
        row=torch.from_numpy(rows[:, 1]),
        col=torch.from_numpy(rows[:, 2]),
        vectors=torch.from_numpy(table.vectors[rows[:, 3]]),
    )


@functools.lru_cache(maxsize=16)
def _from_lon_lat(crs: str) -> Transformer:
    return Transformer.from_crs("EPSG:4326", crs, always_xy=True)


def _pixel(transform: tuple[float, ...], x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pixel (col, row) holding each point, through the inverse of the window's affine."""
    a, b, c, d, e, f = transform
    det = a * e - b * d
    col = (e * (x - c) - b * (y - f)) / det
    row = (a * (y - f) - d * (x - c)) / det
    return np.floor(col).astype(np.int64), np.floor(row).astype(np.int64)


def _times(column: pd.Series, path: Path) -> np.ndarray:
    if pd.api.types.is_integer_dtype(column):
        integers: np.ndarray = column.to_numpy(np.int64)
        return integers
    try:
        stamps = pd.to_datetime(column, utc=True)
    except (ValueError, TypeError) as error:
        raise UserInputError(f"--text {path}: column time holds {column.iloc[0]!r}, not a date ({error})") from None
    millis: np.ndarray = stamps.dt.as_unit("ms").astype("int64").to_numpy(np.int64)
    return millis


def _vectors(column: pd.Series, path: Path) -> np.ndarray:
    """(N, E) float32 from lists (Parquet) or JSON text of lists (GeoJSON/GeoPackage)."""
    rows = [json.loads(v) if isinstance(v, str) else list(v) for v in column]
    lengths = {len(r) for r in rows}
    if len(lengths) != 1 or 0 in lengths:
        raise UserInputError(
            f"--text {path}: every vector must have the same, non-zero length (found lengths {sorted(lengths)})"
        )
    return np.asarray(rows, np.float32)
