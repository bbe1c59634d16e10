"""Labelled points and polygons from the vector files users have, as one lon/lat GeoDataFrame.

    points = read_points("labels.gpkg")                      # any CRS the file declares -> EPSG:4326
    points = read_points("suite.csv")                        # lon/lat (or x/y in degrees) columns
    points = read_points("plots.csv", crs="EPSG:32633")      # x/y in metres, declared by the user

GeoJSON, GeoPackage, Shapefile (anything pyogrio reads), GeoParquet, and tables without geometry
(CSV or plain Parquet, e.g. the AlphaEarth evaluation suite's x, y, label, ... columns) whose
coordinates sit in lon/lat or x/y columns. Coordinates that cannot be in the CRS the file
declares (degrees beyond +-180/90) are refused rather than silently misplaced.
"""

from __future__ import annotations

from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
from pyproj import CRS
from pyproj.exceptions import CRSError

from aef_pipeline.errors import UserInputError

# Column pairs a table's coordinates may sit in, in order of preference.
COORDINATE_COLUMNS = (("lon", "lat"), ("longitude", "latitude"), ("x", "y"))
TABLE_SUFFIXES = (".csv", ".tsv", ".txt")
FORMATS = "GeoJSON, GeoPackage, GeoParquet, Shapefile, or CSV/Parquet with lon/lat (or x/y) columns"


def read_points(path: str | Path, crs: str | None = None) -> gpd.GeoDataFrame:
    """The features of `path` in EPSG:4326 with their attribute columns. `crs` declares the CRS of
    a table's coordinate columns (default EPSG:4326) or of a vector file that declares none."""
    path = Path(path)
    if not path.is_file():
        raise UserInputError(f"points file {path} not found: give a path to a {FORMATS}")
    frame = _read_table(path, crs) if path.suffix.lower() in TABLE_SUFFIXES else _read_vector(path, crs)
    if frame.empty:
        raise UserInputError(f"{path} holds no features: give a file with labelled points or polygons")
    if frame.geometry.isna().any() or frame.geometry.is_empty.any():
        rows = np.flatnonzero((frame.geometry.isna() | frame.geometry.is_empty).to_numpy())[:5].tolist()
        raise UserInputError(f"{path}: features {rows} have no geometry: drop them or give their coordinates")
    return _checked_lonlat(frame.to_crs("EPSG:4326"), path)


def _read_vector(path: Path, crs: str | None) -> gpd.GeoDataFrame:
    try:
        parquet = path.suffix.lower() in (".parquet", ".geoparquet")
        frame = _read_parquet(path, crs) if parquet else gpd.read_file(path)
    except UserInputError:
        raise
    except Exception as error:  # pyogrio and pyarrow raise many types for one cause: unreadable
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise UserInputError(f"cannot read points from {path} ({reason}): give a {FORMATS}") from None
    if frame.crs is None:
        if crs is None:
            raise UserInputError(f"{path} declares no CRS: pass --points-crs (e.g. EPSG:4326)")
        frame = frame.set_crs(_crs(crs))
    elif crs is not None and CRS.from_user_input(frame.crs) != _crs(crs):
        raise UserInputError(
            f"{path} declares {frame.crs.to_string()}, not --points-crs {crs}: drop --points-crs or fix the file"
        )
    return frame


def _read_parquet(path: Path, crs: str | None) -> gpd.GeoDataFrame:
    """GeoParquet, or a plain Parquet table with coordinate columns (the evaluation suite's)."""
    try:
        return gpd.read_parquet(path)
    except ValueError:  # no geometry metadata: a plain table
        return _from_columns(pd.read_parquet(path), path, crs)


def _read_table(path: Path, crs: str | None) -> gpd.GeoDataFrame:
    try:
        table = pd.read_csv(path, sep="\t" if path.suffix.lower() == ".tsv" else ",")
    except Exception as error:
        raise UserInputError(f"cannot read points from {path} ({error}): give a {FORMATS}") from None
    return _from_columns(table, path, crs)


def _from_columns(table: pd.DataFrame, path: Path, crs: str | None) -> gpd.GeoDataFrame:
    names = {name.lower(): name for name in table.columns}
    for x_name, y_name in COORDINATE_COLUMNS:
        if x_name in names and y_name in names:
            x, y = (pd.to_numeric(table[names[n]], errors="coerce") for n in (x_name, y_name))
            if x.isna().any() or y.isna().any():
                raise UserInputError(
                    f"{path}: columns {names[x_name]}/{names[y_name]} hold values that are not numbers"
                )
            geometry = gpd.points_from_xy(x, y)
            return gpd.GeoDataFrame(table, geometry=geometry, crs=_crs(crs or "EPSG:4326"))
    raise UserInputError(f"{path} has no coordinate columns (lon/lat, longitude/latitude or x/y): add them")


def _crs(text: str) -> CRS:
    try:
        return CRS.from_user_input(text)
    except CRSError:
        raise UserInputError(f"--points-crs {text!r} is not a CRS: give e.g. EPSG:4326 or EPSG:32633") from None


def _checked_lonlat(frame: gpd.GeoDataFrame, path: Path) -> gpd.GeoDataFrame:
    """Coordinates of a file whose declared CRS is wrong (metres declared as degrees) end up
    outside the globe: refuse them instead of sampling the wrong place."""
    west, south, east, north = frame.total_bounds
    if not (-180 <= west <= east <= 180 and -90 <= south <= north <= 90) or not np.isfinite(frame.total_bounds).all():
        raise UserInputError(
            f"{path}: coordinates span {west:.6g} {south:.6g} {east:.6g} {north:.6g}, not lon/lat in the CRS "
            "declared: pass --points-crs with the CRS they are in (e.g. EPSG:32633)"
        )
    return frame
