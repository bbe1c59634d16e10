"""`aef-pipeline evaluate`: the paper's protocol on one or more fields, next to a raw-pixel baseline.

    results, report = evaluate(EvaluationRequest(Path("truth.geojson"), (Path("a.zarr"), Path("b.zarr"))))

Points come from any file `read_points` reads, including the table format of the paper's public
evaluation suite (x, y, label, valid_time_start_ms, valid_time_end_ms, ..., split; EPSG:4326).
Each field is sampled at every point (a point without a vector is NaN there, and the protocol
scores every column on the points valid in all of them). The training pool is the `split ==
"train"` rows and the test set the `split == "test"` rows; a table without a `split` column is
split by 1.28 km blocks (half of the blocks train, chosen by `seed`), so no test point sits next
to a training point. Rows whose valid time (`valid_time_start_ms`) falls outside the period are
left out and counted.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
from numpy.typing import NDArray
from pyproj import Transformer

from aef_pipeline.errors import UserInputError
from aef_pipeline.grid import utm_epsg, utm_zone
from aef_pipeline.maps.points import read_points
from aef_pipeline.maps.protocol import (
    LabelsPerClass,
    ProtocolResult,
    ProtocolSettings,
    Task,
    protocol_table,
    results_as_json,
    run_protocol,
)
from aef_pipeline.maps.sample import choose_period, sample_field
from aef_pipeline.plan import Period
from aef_pipeline.store import BANDS, required_zones, zone_attrs, zones_in

BLOCK_M = 1280.0  # the split of a table without one: blocks as far apart as the paper's training points


@dataclass(frozen=True)
class EvaluationRequest:
    points: Path
    fields: tuple[Path, ...]
    property: str | None = None
    """The label column; default "label" (the evaluation suite's)."""
    period: str | None = None
    labels_per_class: tuple[LabelsPerClass, ...] = (1, 10, "max")
    regress: bool = False
    baseline_stac: str | None = None
    """A STAC catalog for the raw-pixel baseline (per-band annual and monthly means)."""
    points_crs: str | None = None
    seed: int = 0


def evaluate(request: EvaluationRequest) -> tuple[list[ProtocolResult], dict[str, Any]]:
    """Every field (and the baseline) scored by the protocol; the results and a JSON-ready report."""
    if not request.fields:
        raise UserInputError("no field given: pass --fields A.zarr [B.zarr ...]")
    for path in request.fields:
        required_zones(path)
    settings = ProtocolSettings(labels_per_class=request.labels_per_class, seed=request.seed)
    points = read_points(request.points, request.points_crs)
    column = _label_column(points, request)
    period = choose_period(request.fields[0], request.period)
    points, outside_period = _in_period(points, period)
    train = _training_pool(points, request.seed)
    features = {_name(path, request.fields): _field_matrix(path, points, period) for path in request.fields}
    if request.baseline_stac:
        features.update(_baseline(points, period, request.baseline_stac))
    task: Task = "regression" if request.regress else "classification"
    labels = points[column].to_numpy(np.float64) if request.regress else points[column].to_numpy()
    results = run_protocol(features, labels, train, task, settings)
    report = {
        "period": period.label,
        "points": len(points),
        "left_out_outside_period": outside_period,
        "split": "split column" if "split" in points.columns else f"blocks of {BLOCK_M / 1000:g} km",
        "fields": {_name(p, request.fields): _provenance(p) for p in request.fields},
        "baseline": request.baseline_stac,
        **results_as_json(results),
    }
    return results, report


def render(results: list[ProtocolResult], report: dict[str, Any]) -> str:
    """The table, with what a reader must know next to it: untrained fields, a missing baseline."""
    lines = [f"period {report['period']}, {report['points']} points ({report['split']})", protocol_table(results)]
    untrained = [name for name, about in report["fields"].items() if not about["trained"]]
    if untrained:
        lines.append(f"untrained encoder: {', '.join(untrained)} (seeded initialisation, not AlphaEarth weights)")
    if not report["baseline"]:
        lines.append("no raw-pixel baseline: pass --baseline-stac to see whether an embedding helps at all")
    return "\n".join(lines)


def _label_column(points: gpd.GeoDataFrame, request: EvaluationRequest) -> str:
    column = request.property or "label"
    if column not in points.columns:
        names = ", ".join(c for c in points.columns if c != points.geometry.name)
        raise UserInputError(f"{request.points} has no column {column!r}; it has {names}: pass --property")
    empty = np.flatnonzero(pd.isna(points[column]).to_numpy() | (points[column].astype(str).str.strip() == ""))
    if empty.size:
        raise UserInputError(
            f"{request.points}: {empty.size} rows have no {column!r} (e.g. row {empty[0]}): drop or label them"
        )
    if request.regress:
        try:
            points[column].to_numpy().astype(np.float64)
        except (TypeError, ValueError):
            raise UserInputError(f"--regress needs a numeric column; {column!r} is not: drop --regress") from None
    return column


def _in_period(points: gpd.GeoDataFrame, period: Period) -> tuple[gpd.GeoDataFrame, int]:
    """The rows whose valid time (the suite's `valid_time_start_ms` .. `valid_time_end_ms`, or its
    start alone) overlaps the period: a label valid 2017-2024 labels every year of it."""
    if "valid_time_start_ms" not in points.columns:
        return points.reset_index(drop=True), 0
    start_ms = points["valid_time_start_ms"].to_numpy(np.float64)
    end_ms = points["valid_time_end_ms"].to_numpy(np.float64) if "valid_time_end_ms" in points.columns else start_ms + 1
    first, last = period.start.timestamp() * 1000, period.end.timestamp() * 1000
    inside = (start_ms < last) & (end_ms > first)
    if not inside.any():
        earliest = dt.datetime.fromtimestamp(start_ms.min() / 1000, dt.UTC)
        raise UserInputError(
            f"no point's valid time overlaps {period.label} (the first starts {earliest:%Y-%m-%d}): pass --period"
        )
    return points[inside].reset_index(drop=True), int((~inside).sum())


def _training_pool(points: gpd.GeoDataFrame, seed: int) -> NDArray[np.bool_]:
    if "split" in points.columns:
        split = points["split"].astype(str).str.lower().to_numpy()
        unknown = sorted(set(split) - {"train", "test"})
        if unknown:
            raise UserInputError(f"split values {unknown} are neither train nor test: fix the split column")
        return np.asarray(split == "train")
    where = points.geometry.representative_point()
    lon, lat = where.x.to_numpy(), where.y.to_numpy()
    blocks = np.empty(len(points), dtype=object)
    zones = np.array([f"{utm_zone(x):02d}{'N' if y >= 0 else 'S'}" for x, y in zip(lon, lat, strict=True)])
    for zone in sorted(set(zones)):  # one transformer per zone, not per point
        rows = np.flatnonzero(zones == zone)
        to_utm = Transformer.from_crs(4326, utm_epsg(int(zone[:-1]), zone[-1]), always_xy=True)
        x, y = to_utm.transform(lon[rows], lat[rows])
        blocks[rows] = [
            (zone, int(i), int(j)) for i, j in zip(np.asarray(x) // BLOCK_M, np.asarray(y) // BLOCK_M, strict=True)
        ]
    rng = np.random.default_rng(seed)
    names = sorted(set(blocks))
    chosen = {block: rng.random() < 0.5 for block in names}
    train = np.array([chosen[block] for block in blocks], dtype=bool)
    if train.all() or not train.any():
        raise UserInputError(
            f"the points fall in {len(names)} blocks of {BLOCK_M / 1000:g} km, too few to split into train and "
            "test: add a split column (train/test)"
        )
    return train


def _field_matrix(path: Path, points: gpd.GeoDataFrame, period: Period) -> NDArray[np.float32]:
    """The field's vectors at every point; NaN rows where it has none."""
    samples = sample_field(path, points, period)
    matrix = np.full((len(points), len(BANDS)), np.nan, np.float32)
    matrix[samples.table.index.to_numpy()] = samples.vectors()
    return matrix


def _baseline(points: gpd.GeoDataFrame, period: Period, stac: str) -> dict[str, NDArray[np.float32]]:
    from aef_pipeline.maps.baseline import baseline_features
    from aef_pipeline.search import CatalogConfig

    found = baseline_features(points, period, CatalogConfig(stac))
    return {"raw annual mean": found.annual, "raw monthly means": found.monthly}


def _name(path: Path, fields: tuple[Path, ...]) -> str:
    names = [p.name for p in fields]
    return path.name if names.count(path.name) == 1 else str(path)


def _provenance(path: Path) -> dict[str, Any]:
    attrs = zone_attrs(path, zones_in(path)[0]) or {}
    trained = bool(attrs.get("aef:trained"))
    return {"model": attrs.get("aef:model"), "weights": attrs.get("aef:model_weights"), "trained": trained}
