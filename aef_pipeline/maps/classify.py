"""Maps from a field and labelled points (`aef-pipeline classify`, `--regress`).

    report = make_map(MapRequest(Path("field.zarr"), Path("labels.geojson"), "class", Path("map.tif")))

Fit a scikit-learn estimator (kNN, linear, random forest) on the field's vectors at the labelled
points, estimate its accuracy by spatially grouped cross-validation (folds by blocks of 1.28 km,
as the paper keeps training points apart: neighbouring pixels of one parcel must not be in the
training and the test fold at once), then predict every written pixel chunk by chunk on dask
and write the class (or value) and a confidence band as a COG with overviews or as Zarr, on the
field's own grid (CRS and transform), nodata where the field has none.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr
from numpy.typing import NDArray
from odc.geo import CRS
from odc.geo.geobox import GeoBox
from odc.geo.xr import xr_reproject
from pyproj import Transformer
from pyproj.exceptions import CRSError
from sklearn.base import BaseEstimator
from sklearn.ensemble import RandomForestClassifier, RandomForestRegressor
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.metrics import balanced_accuracy_score, confusion_matrix, mean_squared_error, r2_score
from sklearn.model_selection import GroupKFold, StratifiedGroupKFold
from sklearn.neighbors import KNeighborsClassifier, KNeighborsRegressor

from aef_pipeline.errors import AefWarning, UserInputError
from aef_pipeline.grid import RESOLUTION_M, utm_epsg
from aef_pipeline.maps.points import read_points
from aef_pipeline.maps.raster import write_cog
from aef_pipeline.maps.sample import Samples, sample_field
from aef_pipeline.store import (
    NODATA_INT8,
    dequantise,
    finalize,
    open_embeddings,
    written_part,
    zone_attrs,
    zones_in,
    zones_with,
)

METHODS = ("knn", "linear", "forest")
BLOCK_M = 1280.0  # cross-validation blocks: the paper keeps training points 1.28 km apart
BOOTSTRAP = 200  # resamples of the blocks for the accuracy interval
PREDICT_ROWS = 65_536  # pixels per estimator call inside a chunk (kNN distances stay ~ tens of MB)
SUFFIXES = (".tif", ".tiff", ".zarr")


class UntrainedFieldWarning(AefWarning):
    """The map comes from a field of an untrained encoder: compare it with a raw-pixel baseline."""


@dataclass(frozen=True)
class MapRequest:
    field_path: Path
    labels: Path
    property: str
    out: Path
    method: str = "knn"
    k: int = 3
    period: str | None = None
    regress: bool = False
    folds: int = 5
    overwrite: bool = False
    points_crs: str | None = None
    seed: int = 0
    crs: str | None = None
    """One mosaic in this CRS instead of one map per zone group."""


@dataclass
class Target:
    """The labels as the estimator sees them: codes (classes) or values (regression)."""

    values: NDArray[Any]
    names: dict[int, str] = field(default_factory=dict)
    """Class code -> name, for string labels (codes 1..n); empty for integer labels."""


def make_map(request: MapRequest) -> dict[str, Any]:
    """Fit, cross-validate, predict and write; returns the report (also saved as JSON)."""
    _check_request(request)
    points = read_points(request.labels, request.points_crs)
    if request.property not in points.columns:
        columns = ", ".join(c for c in points.columns if c != points.geometry.name)
        raise UserInputError(f"{request.labels} has no property {request.property!r}; it has {columns}")
    samples = sample_field(request.field_path, points, request.period)
    samples.require_some(request.field_path, request.labels)
    _check_labelled(samples.table[request.property], request)
    target = _target(samples.table[request.property].to_numpy(), request)
    features, groups = samples.vectors(), _blocks(samples)
    _check_labels(target, groups, request)
    accuracy = cross_validate(features, target, groups, request)
    estimator = _estimator(request, len(features)).fit(features, target.values)
    outputs = _write_maps(request, samples, estimator, target)
    report = _report(request, samples, target, accuracy, outputs)
    report_path = request.out.with_name(request.out.name + ".json")
    report_path.write_text(json.dumps(report, indent=1, default=str))
    report["report"] = str(report_path)
    return report


# --- labels and checks ---------------------------------------------------------------------------


def _check_request(request: MapRequest) -> None:
    if request.crs is not None:
        try:
            CRS(request.crs)
        except CRSError:
            raise UserInputError(f"--crs {request.crs!r} is not a CRS: give e.g. EPSG:3035 or EPSG:32633") from None
    if request.method not in METHODS:
        raise UserInputError(f"--method {request.method!r} is not one of {', '.join(METHODS)}")
    if request.k < 1 or request.folds < 2:
        raise UserInputError(f"--k {request.k} and --folds {request.folds}: k must be >= 1 and folds >= 2")
    if request.out.suffix.lower() not in SUFFIXES:
        raise UserInputError(f"--out {request.out}: end it with .tif (a COG) or .zarr")
    if not request.out.parent.is_dir():
        raise UserInputError(f"{request.out.parent} does not exist: create it or choose another --out")
    if _outputs_exist(request.out) and not request.overwrite:
        raise UserInputError(f"{request.out} exists: choose another --out or pass --overwrite")


def _outputs_exist(out: Path) -> bool:
    return out.exists() or any(out.parent.glob(f"{out.stem}_??[NS]{out.suffix}"))


def _check_labelled(values: Any, request: MapRequest) -> None:
    """Empty labels must not become a class of their own ("nan") or turn integer classes into text."""
    empty = np.flatnonzero(pd.isna(values).to_numpy() | (values.astype(str).str.strip() == "").to_numpy())
    if empty.size:
        raise UserInputError(
            f"{request.labels}: {empty.size} labelled points have no {request.property!r} "
            f"(e.g. row {values.index[empty[0]]}): drop or label them"
        )


def _target(raw: NDArray[Any], request: MapRequest) -> Target:
    if request.regress:
        try:
            values = raw.astype(np.float64)
        except (TypeError, ValueError):
            raise UserInputError(
                f"--regress needs a numeric property; {request.property!r} holds e.g. {raw[0]!r}: "
                "classify it without --regress"
            ) from None
        if not np.isfinite(values).all():
            raise UserInputError(f"property {request.property!r} has empty or non-finite values: fill or drop them")
        return Target(values)
    numeric = np.array([_as_int(v) for v in raw], dtype=object)
    if all(v is not None for v in numeric):  # integer classes keep their values in the map
        return Target(numeric.astype(np.int64))
    names = sorted({str(v) for v in raw})
    codes = {name: i + 1 for i, name in enumerate(names)}  # string classes: codes 1..n, 0 never used
    return Target(np.array([codes[str(v)] for v in raw], np.int64), {c: n for n, c in codes.items()})


def _as_int(value: Any) -> int | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return int(number) if np.isfinite(number) and number == int(number) else None


def _check_labels(target: Target, groups: NDArray[np.str_], request: MapRequest) -> None:
    if len(set(groups)) < request.folds:
        raise UserInputError(
            f"the labelled points fall in {len(set(groups))} blocks of {BLOCK_M / 1000:g} km, fewer than the "
            f"{request.folds} cross-validation folds: spread the points out or pass --folds {max(2, len(set(groups)))}"
        )
    if request.regress:
        return
    classes, counts = np.unique(target.values, return_counts=True)
    if len(classes) < 2:
        raise UserInputError(
            f"property {request.property!r} has a single class ({_name(classes[0], target)}): give two or more"
        )
    few = [f"{_name(c, target)} ({n})" for c, n in zip(classes, counts, strict=True) if n < request.folds]
    if few:
        raise UserInputError(
            f"classes {', '.join(few)} have fewer labels than the {request.folds} cross-validation folds: "
            "add labels or pass a smaller --folds"
        )


def _name(code: Any, target: Target) -> str:
    return target.names.get(int(code), str(code))


def _blocks(samples: Samples) -> NDArray[np.str_]:
    """The 1.28 km block of each sample, in its zone's CRS (blocks never straddle zones)."""
    blocks = np.empty(len(samples.table), dtype=object)
    where = samples.table.geometry.representative_point()
    zones = samples.table["zone"].to_numpy()
    for zone in sorted(set(zones)):
        rows = np.flatnonzero(zones == zone)
        crs = utm_epsg(int(zone[:-1]), zone[-1])
        x, y = Transformer.from_crs(4326, crs, always_xy=True).transform(where.x.iloc[rows], where.y.iloc[rows])
        bx, by = np.floor(np.asarray(x) / BLOCK_M).astype(int), np.floor(np.asarray(y) / BLOCK_M).astype(int)
        blocks[rows] = [f"{zone}:{i}:{j}" for i, j in zip(bx, by, strict=True)]
    return blocks.astype(str)


# --- estimators and cross-validation -------------------------------------------------------------


def _estimator(request: MapRequest, n_train: int) -> BaseEstimator:
    k = min(request.k, n_train)  # kNN cannot ask for more neighbours than there are labels
    if request.regress:
        regressors: dict[str, Callable[[], BaseEstimator]] = {
            "knn": lambda: KNeighborsRegressor(n_neighbors=k),
            "linear": LinearRegression,
            "forest": lambda: RandomForestRegressor(n_estimators=200, random_state=request.seed),
        }
        return regressors[request.method]()
    classifiers: dict[str, Callable[[], BaseEstimator]] = {
        "knn": lambda: KNeighborsClassifier(n_neighbors=k),
        "linear": lambda: LogisticRegression(max_iter=2000),
        "forest": lambda: RandomForestClassifier(n_estimators=200, random_state=request.seed),
    }
    return classifiers[request.method]()


def cross_validate(
    features: NDArray[np.float32], target: Target, groups: NDArray[np.str_], request: MapRequest
) -> dict[str, Any]:
    """Out-of-fold predictions with folds of whole blocks; the metric on all of them, and a 95 %
    interval from resampling the blocks (points of one block are not independent)."""
    if request.regress:
        splitter: Any = GroupKFold(n_splits=request.folds)
    else:
        splitter = StratifiedGroupKFold(n_splits=request.folds, shuffle=True, random_state=request.seed)
    predicted = np.empty_like(target.values)
    for train, test in splitter.split(features, target.values, groups):
        model = _estimator(request, len(train)).fit(features[train], target.values[train])
        predicted[test] = model.predict(features[test])
    score = _scores(target.values, predicted, request.regress)
    low, high = _interval(target.values, predicted, groups, request)
    result: dict[str, Any] = {
        "folds": request.folds,
        "block_m": BLOCK_M,
        "blocks": len(set(groups)),
        "samples": len(target.values),
        **score,
        "interval_95": [low, high],
    }
    if not request.regress:
        classes = sorted(set(target.values.tolist()))
        result["confusion_matrix"] = {
            "classes": [_name(c, target) for c in classes],
            "rows_true_columns_predicted": confusion_matrix(target.values, predicted, labels=classes).tolist(),
        }
    return result


def _scores(truth: NDArray[Any], predicted: NDArray[Any], regress: bool) -> dict[str, float]:
    if regress:
        return {"r2": float(r2_score(truth, predicted)), "rmse": float(np.sqrt(mean_squared_error(truth, predicted)))}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a class never predicted in a resample: its recall is 0, as it should be
        return {"balanced_accuracy": float(balanced_accuracy_score(truth, predicted))}


def _interval(
    truth: NDArray[Any], predicted: NDArray[Any], groups: NDArray[np.str_], request: MapRequest
) -> tuple[float, float]:
    metric = "r2" if request.regress else "balanced_accuracy"
    names = np.unique(groups)
    members = [np.flatnonzero(groups == name) for name in names]
    rng = np.random.default_rng(request.seed)
    values = []
    for _ in range(BOOTSTRAP):
        rows = np.concatenate([members[i] for i in rng.integers(0, len(names), len(names))])
        if not request.regress and len(np.unique(truth[rows])) < 2:
            continue
        values.append(_scores(truth[rows], predicted[rows], request.regress)[metric])
    return float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))


# --- prediction and output ------------------------------------------------------------------------


def _write_maps(request: MapRequest, samples: Samples, estimator: BaseEstimator, target: Target) -> list[str]:
    """One map per zone group holding the period (`map.tif`, or `map_33N.tif` ... for several), or
    one mosaic in `request.crs`."""
    zones = [z for z in zones_with(request.field_path, samples.period) if z]
    predictions = {
        zone: predict_map(request.field_path, zone, samples.period, estimator, target, request.regress)
        for zone in zones
    }
    if request.crs:
        predictions = {"mosaic": mosaic(list(predictions.values()), request.crs)}
    outputs = []
    for name, prediction in predictions.items():
        single = len(predictions) == 1
        out = request.out if single else request.out.with_name(f"{request.out.stem}_{name}{request.out.suffix}")
        _replace(out, request.overwrite)
        if out.suffix.lower() == ".zarr":
            _write_zarr(prediction, out, target, request)
        else:
            _write_cog(prediction, out, target, request)
        outputs.append(str(out))
    return outputs


def mosaic(predictions: list[xr.Dataset], crs: str, resolution_m: float = RESOLUTION_M) -> xr.Dataset:
    """The zones' maps on one grid of `crs` (`resolution_m`, or its equivalent in degrees for a
    geographic CRS), nearest neighbour (classes must stay classes); where zones overlap, the first
    zone's pixel wins. Lazy: odc-geo reprojects chunk by chunk."""
    target_crs = CRS(crs)
    resolution = resolution_m / 1e5 if target_crs.geographic else float(resolution_m)
    extents = [p.odc.geobox.extent.to_crs(target_crs) for p in predictions]
    left = min(e.boundingbox.left for e in extents)
    bottom = min(e.boundingbox.bottom for e in extents)
    right = max(e.boundingbox.right for e in extents)
    top = max(e.boundingbox.top for e in extents)
    grid = GeoBox.from_bbox((left, bottom, right, top), target_crs, resolution=resolution)
    warped = [xr_reproject(p, grid, resampling="nearest", dst_nodata=np.nan) for p in predictions]
    combined = warped[0]
    for other in warped[1:]:
        combined = combined.fillna(other)
    located: xr.Dataset = combined.rio.write_crs(target_crs.to_wkt()).rio.write_transform(grid.affine)
    return located


def predict_map(
    store: Path, zone: str, period: Any, estimator: BaseEstimator, target: Target, regress: bool
) -> xr.Dataset:
    """The map of one zone group, lazy: (value or class, confidence or spread) per pixel, computed
    chunk by chunk (640 px squares, as open_embeddings chunks the field), NaN where the field
    has no vector. The field is read as stored and only valid vectors are de-quantised, so the
    empty parts of the area cost a comparison, not a prediction."""
    # The rectangle of what the period's records wrote, not of every tile ever planned in the zone.
    field_ds = written_part(
        open_embeddings(store, zone, period=period, as_stored=True).isel(time=0), store, zone, period
    )
    storage = field_ds.attrs["aef:storage"]
    embedding = field_ds.embedding.transpose("y", "x", "band")
    predicted = xr.apply_ufunc(
        _predict_block,
        embedding,
        kwargs={"estimator": estimator, "regress": regress, "storage": storage},
        input_core_dims=[["band"]],
        output_core_dims=[["output"]],
        dask="parallelized",
        output_dtypes=[np.float64],
        dask_gufunc_kwargs={"output_sizes": {"output": 2}},
    )
    first, second = ("value", "spread") if regress else ("class", "confidence")
    ds = xr.Dataset({first: predicted.isel(output=0), second: predicted.isel(output=1)})
    located: xr.Dataset = ds.rio.write_crs(field_ds.rio.crs).rio.write_transform(field_ds.rio.transform())
    return located


def _predict_block(stored: NDArray[Any], estimator: Any, regress: bool, storage: str) -> NDArray[np.float64]:
    flat = stored.reshape(-1, stored.shape[-1])
    valid = np.flatnonzero((flat != NODATA_INT8).all(axis=1) if storage == "int8" else np.isfinite(flat).all(axis=1))
    out = np.full((len(flat), 2), np.nan)
    for start in range(0, len(valid), PREDICT_ROWS):
        rows = valid[start : start + PREDICT_ROWS]
        vectors = dequantise(flat[rows]) if storage == "int8" else flat[rows].astype(np.float32)
        out[rows] = _predict_rows(estimator, vectors, regress)
    return out.reshape(*stored.shape[:-1], 2)


def _predict_rows(estimator: Any, rows: NDArray[np.float32], regress: bool) -> NDArray[np.float64]:
    if not regress:
        probabilities = estimator.predict_proba(rows)
        best = probabilities.argmax(axis=1)
        return np.stack([estimator.classes_[best], probabilities[np.arange(len(rows)), best]], axis=1)
    value = estimator.predict(rows)
    if isinstance(estimator, RandomForestRegressor):  # spread: disagreement of the trees
        spread = np.stack([tree.predict(rows) for tree in estimator.estimators_]).std(axis=0)
    elif isinstance(estimator, KNeighborsRegressor):  # spread: of the neighbours' values
        _, neighbours = estimator.kneighbors(rows)
        spread = np.asarray(estimator._y)[neighbours].std(axis=1)
    else:  # least squares gives no per-pixel spread
        spread = np.full(len(rows), np.nan)
    return np.stack([value, spread], axis=1)


def _class_encoding(target: Target) -> tuple[type[np.integer[Any]], int]:
    """The smallest GeoTIFF type that holds the class codes, and its nodata value."""
    codes = target.values
    if codes.min() >= 0 and codes.max() <= 254:
        return np.uint8, 255
    return np.int32, int(np.iinfo(np.int32).min)


def _replace(out: Path, overwrite: bool) -> None:
    if out.exists() and overwrite:
        shutil.rmtree(out) if out.is_dir() else out.unlink()


def _write_cog(prediction: xr.Dataset, out: Path, target: Target, request: MapRequest) -> None:
    """Two bands (class and confidence in %, or value and spread) as a COG with overviews (mode for
    classes, average for values)."""
    if request.regress:
        nodata: float = np.nan
        resampling = "AVERAGE"
        bands = [prediction["value"].astype(np.float32), prediction["spread"].astype(np.float32)]
    else:
        dtype, nodata = _class_encoding(target)
        resampling = "MODE"
        bands = [prediction["class"], (prediction["confidence"] * 100).round()]
        bands = [band.fillna(nodata).astype(dtype) for band in bands]
    stacked = xr.concat(bands, dim="band").assign_coords(band=[1, 2]).rio.write_nodata(nodata)
    descriptions = ("value", "spread") if request.regress else ("class", "confidence_percent")
    write_cog(stacked, out, resampling=resampling, descriptions=descriptions, tags=_tags(request, target))
    if target.names:
        _write_category_names(out, target.names)


def _write_category_names(out: Path, names: dict[int, str]) -> None:
    """GDAL category names of band 1, in GDAL's own sidecar (.aux.xml): GDAL-based tools (QGIS,
    gdalinfo) show the class names; GeoTIFF itself has no place for them."""
    categories = "".join(f"<Category>{_xml(names.get(code, ''))}</Category>" for code in range(max(names) + 1))
    band = f'<PAMRasterBand band="1"><CategoryNames>{categories}</CategoryNames></PAMRasterBand>'
    out.with_name(out.name + ".aux.xml").write_text(f"<PAMDataset>{band}</PAMDataset>\n")


def _xml(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _write_zarr(prediction: xr.Dataset, out: Path, target: Target, request: MapRequest) -> None:
    ds = prediction
    if not request.regress:
        dtype, nodata = _class_encoding(target)
        ds["class"] = ds["class"].fillna(nodata).astype(dtype)
        ds["class"].attrs["_FillValue"] = nodata
        ds["confidence"] = ds["confidence"].astype(np.float32)
    else:
        ds = ds.astype(np.float32)
    ds.attrs.update(_tags(request, target))
    with tempfile.TemporaryDirectory(prefix=f".{out.name}.", dir=out.parent) as tmp:
        partial = Path(tmp) / out.name
        ds.to_zarr(partial, mode="w", consolidated=False)
        finalize(partial)  # consolidated metadata, as every store this package writes
        partial.replace(out)


def _tags(request: MapRequest, target: Target) -> dict[str, str]:
    attrs = zone_attrs_of(request.field_path)
    return {
        "aef:field": str(request.field_path),
        "aef:property": request.property,
        "aef:method": request.method,
        "aef:model": str(attrs.get("aef:model")),
        "aef:model_weights": str(attrs.get("aef:model_weights")),
        "aef:field_trained": str(bool(attrs.get("aef:trained"))),
        "aef:class_names": json.dumps({str(k): v for k, v in target.names.items()}),
    }


def zone_attrs_of(store: Path) -> dict[str, Any]:
    """The attributes every zone group of a store shares (model, weights, storage)."""
    return zone_attrs(store, zones_in(store)[0]) or {}


# --- report ---------------------------------------------------------------------------------------


def _report(
    request: MapRequest, samples: Samples, target: Target, accuracy: dict[str, Any], outputs: list[str]
) -> dict[str, Any]:
    attrs = zone_attrs_of(request.field_path)
    trained = bool(attrs.get("aef:trained"))
    if not trained:
        warnings.warn(
            f"{request.field_path} comes from an untrained encoder: compare this map's accuracy with a raw-pixel "
            "baseline (aef-pipeline evaluate --baseline-stac) before trusting it",
            UntrainedFieldWarning,
            stacklevel=3,
        )
    values, counts = np.unique(target.values, return_counts=True)
    classes = [
        {"code": int(v), "name": _name(v, target), "labels": int(n)} for v, n in zip(values, counts, strict=True)
    ]
    return {
        "request": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(request).items()},
        "period": samples.period.label,
        "field_model": attrs.get("aef:model"),
        "field_weights": attrs.get("aef:model_weights"),
        "field_trained": trained,
        "labels_used": len(samples.table),
        "labels_missing": samples.missing,
        "classes": None if request.regress else classes,
        "cross_validation": accuracy,
        "outputs": outputs,
    }
