"""The paper's evaluation protocol (AlphaEarth Foundations, supplement S4) on sampled feature matrices.

    results = run_protocol({"aef.zarr": aef, "raw-pixel baseline": raw}, target, train, "classification")
    print(protocol_table(results))      # rows (method, labels per class), one column per featurisation
    json.dumps(results_as_json(results))

Pure numerics: every featurisation is a float matrix with one row per labelled point (NaN rows
where it has no data), so the caller samples fields and this module only compares them.

- Points: only those valid (finite) in every featurisation are used, so all columns are scored on
  the same points; how many were dropped is in every result.
- Training sets: 1, 10 and "max" labels per class drawn from the training pool (`train` True);
  "max" is every training point of the class, capped at `max_labels` (300 in the paper). A class
  with fewer points than asked uses all it has. The test set is every test-split point, unbalanced.
- Continuous targets have no classes: the training pool's target is cut at its quantiles into
  `regression_bins` bins (10 by default; tied quantiles merge bins) and labels are drawn per bin,
  as the paper does for ASTER ("200 per bin": `max_labels=200`). "1 label" is then one point per
  bin, and the test set is still every test-split point.
- Methods: k-NN with L2 distance (k = 1, 3; majority vote, or the mean for regression) and a
  linear probe (ordinary least squares with a bias column, no regularisation, one-vs-rest on
  one-hot targets for classes). Metrics: balanced accuracy (classes), R2 (continuous).
- Error bars are the 2.5th and 97.5th percentiles (a 95 % interval) of the metric over resamples.
  At 1 and 10 labels the training draw is repeated `repeats` times and the value is the mean over
  draws. At "max" the draw is fixed, so the value is the score on the whole test split and the
  interval comes from `bootstrap` resamples of the test set.
- Every featurisation and method sees the same draws and the same bootstrap resamples. Each
  labels-per-class setting has its own random stream derived from `seed`, so its draws do not
  depend on which other settings were asked for.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, get_args

import numpy as np
from numpy.typing import NDArray

from aef_pipeline.errors import UserInputError

Task = Literal["classification", "regression"]
LabelsPerClass = int | Literal["max"]
Resampling = Literal["repeated draws", "test bootstrap"]
FloatArray = NDArray[np.float64]
IndexArray = NDArray[np.intp]

METHODS = ("1-NN", "3-NN", "linear probe")
METRICS: dict[Task, str] = {"classification": "balanced accuracy", "regression": "R2"}
INTERVAL = "2.5th to 97.5th percentile"
_PERCENTILES = (2.5, 97.5)
# Distance blocks of at most this many test x train entries (32 MiB of float64) bound memory
# however many test points there are.
_BLOCK_ELEMENTS = 1 << 22


@dataclass(frozen=True)
class ProtocolSettings:
    """How much to draw and resample; the defaults are the paper's."""

    labels_per_class: tuple[LabelsPerClass, ...] = (1, 10, "max")
    """Training-set sizes per class (per bin for regression), in the order the table lists them."""
    max_labels: int = 300
    """The cap on "max": a class with more training points is sampled down to this many, once."""
    repeats: int = 20
    """Random training draws at each numeric labels-per-class; more draws, steadier interval ends."""
    bootstrap: int = 100
    """Test-set bootstrap resamples at "max" (B in the paper)."""
    regression_bins: int = 10
    """Quantile bins of a continuous target that stand in for classes when drawing labels."""
    seed: int = 0
    """Fixes every draw and resample: the same inputs and seed give the same results."""

    def __post_init__(self) -> None:
        for lpc in self.labels_per_class:
            if lpc != "max" and not (isinstance(lpc, int) and lpc >= 1):
                raise UserInputError(
                    f"labels per class {lpc!r} is not a positive integer or 'max'; use e.g. 1, 10, max"
                )
        for name in ("max_labels", "repeats", "bootstrap", "regression_bins"):
            if getattr(self, name) < 1:
                raise UserInputError(f"{name} is {getattr(self, name)}; it must be at least 1")


@dataclass(frozen=True)
class ProtocolResult:
    """One cell of the comparison: a featurisation scored by one method at one training-set size."""

    featurisation: str
    method: str
    """One of METHODS: "1-NN", "3-NN" or "linear probe"."""
    labels_per_class: LabelsPerClass
    metric: str
    """METRICS[task]: "balanced accuracy" or "R2"."""
    value: float
    """Mean over the training draws at a numeric size; the whole test split's score at "max"."""
    low: float
    """2.5th percentile over the draws (numeric size) or the test bootstrap ("max")."""
    high: float
    """97.5th percentile, likewise."""
    draws: int
    """How many training draws or bootstrap resamples the interval comes from."""
    resampling: Resampling
    n_train: int
    """Training points in each draw (the same in every draw)."""
    n_test: int
    n_dropped: int
    """Points left out because some featurisation has no data there."""
    n_invalid: int
    """Points where this featurisation itself has no data (each is among the dropped)."""


@dataclass(frozen=True)
class _Problem:
    """The validated inputs restricted to the points valid in every featurisation."""

    task: Task
    features: dict[str, FloatArray]
    y: NDArray[Any]
    """Class codes 0..C-1, or the continuous target as float64."""
    strata: IndexArray
    """Class code or quantile bin of each point; labels are drawn per stratum."""
    pool: IndexArray
    test: IndexArray
    n_dropped: int
    n_invalid: dict[str, int]


@dataclass(frozen=True)
class _Draw:
    """The training sets of one labels-per-class setting and, at "max", the test resamples."""

    labels_per_class: LabelsPerClass
    train_sets: list[IndexArray]
    test_resamples: IndexArray | None
    """(B, n_test) positions into the test set, or None for repeated draws."""


def run_protocol(
    features: Mapping[str, NDArray[Any]],
    target: NDArray[Any],
    train: NDArray[np.bool_],
    task: Task,
    settings: ProtocolSettings = ProtocolSettings(),
) -> list[ProtocolResult]:
    """Score every featurisation with every method at every training-set size.

    `features` maps a name (a field path, "raw-pixel baseline") to an (n_points, d) array; `target`
    holds the n labels (ints or strings) or continuous values; `train` marks the training pool and
    the rest is the test split. Results are ordered by labels per class, featurisation, method.
    """
    problem = _prepare(features, target, train, task, settings.regression_bins)
    results: list[ProtocolResult] = []
    for lpc in settings.labels_per_class:
        results += _score_draw(problem, _plan_draw(problem, lpc, settings))
    return results


# --- estimators and metrics -------------------------------------------------------------------


def knn_predict(x_train: NDArray[Any], y_train: NDArray[Any], x_test: NDArray[Any], k: int, task: Task) -> NDArray[Any]:
    """k-nearest-neighbour predictions with L2 distance; all training points when there are fewer than k.

    Classes: majority vote; a tie in votes goes to the class of the nearest neighbour among the
    tied classes (so 3-NN with three different classes answers like 1-NN). Equally distant
    training points rank in their order in `x_train`. Regression: the mean of the neighbours.
    """
    order = _nearest(np.asarray(x_train, np.float64), np.asarray(x_test, np.float64), min(k, len(x_train)))
    if task == "regression":
        mean: FloatArray = np.asarray(y_train, np.float64)[order].mean(axis=1)
        return mean
    classes, codes = np.unique(y_train, return_inverse=True)
    return classes[_vote(codes[order], len(classes))]


def least_squares_probe(x_train: NDArray[Any], y_train: NDArray[Any], x_test: NDArray[Any], task: Task) -> NDArray[Any]:
    """Ordinary least squares with a bias column and no regularisation, fitted by np.linalg.lstsq.

    With more unknowns than training points (1 label per class, 64-d vectors) this is the
    minimum-norm solution, bias included. Classes: one-vs-rest on one-hot targets, predicting the
    class with the largest score (the first in sorted order on a tie). Regression: the fitted value.
    """
    design = _with_bias(x_train)
    if task == "regression":
        weights = np.linalg.lstsq(design, np.asarray(y_train, np.float64), rcond=None)[0]
        fitted: FloatArray = _with_bias(x_test) @ weights
        return fitted
    classes, codes = np.unique(y_train, return_inverse=True)
    weights = np.linalg.lstsq(design, np.eye(len(classes))[codes], rcond=None)[0]
    predicted: NDArray[Any] = classes[np.argmax(_with_bias(x_test) @ weights, axis=1)]
    return predicted


def balanced_accuracy(y_true: NDArray[Any], y_pred: NDArray[Any]) -> float:
    """The mean over the classes present in `y_true` of the fraction of each predicted correctly."""
    _, codes = np.unique(y_true, return_inverse=True)
    hits = np.bincount(codes, weights=np.asarray(y_pred == y_true, np.float64))
    return float(np.mean(hits / np.bincount(codes)))


def r2(y_true: NDArray[Any], y_pred: NDArray[Any]) -> float:
    """The coefficient of determination; NaN when `y_true` is constant (it is undefined there)."""
    y_true = np.asarray(y_true, np.float64)
    total = float(np.sum((y_true - y_true.mean()) ** 2))
    residual = float(np.sum((y_true - y_pred) ** 2))
    return 1.0 - residual / total if total > 0 else math.nan


def predict(
    method: str, x_train: NDArray[Any], y_train: NDArray[Any], x_test: NDArray[Any], task: Task
) -> NDArray[Any]:
    """The predictions of one of METHODS."""
    if method == "linear probe":
        return least_squares_probe(x_train, y_train, x_test, task)
    if method in ("1-NN", "3-NN"):
        return knn_predict(x_train, y_train, x_test, int(method[0]), task)
    raise ValueError(f"unknown method {method!r}; expected one of {METHODS}")


def _nearest(x_train: FloatArray, x_test: FloatArray, k: int) -> IndexArray:
    """(n_test, k) indices of the nearest training points, nearest first."""
    # |a|^2 is the same for every training point, so |b|^2 - 2 a.b ranks them like |a - b|^2.
    norms = np.sum(x_train**2, axis=1)
    rows = max(1, _BLOCK_ELEMENTS // max(1, len(x_train)))
    blocks = [
        np.argsort(norms - 2 * x_test[start : start + rows] @ x_train.T, axis=1, kind="stable")[:, :k]
        for start in range(0, len(x_test), rows)
    ]
    return np.concatenate(blocks) if blocks else np.empty((0, k), np.intp)


def _vote(neighbour_codes: IndexArray, n_classes: int) -> IndexArray:
    """The majority class of each row; ties go to the tied class whose member is nearest."""
    rows = np.arange(len(neighbour_codes))[:, None]
    votes = np.zeros((len(neighbour_codes), n_classes), np.int64)
    np.add.at(votes, (rows, neighbour_codes), 1)
    is_top = votes[rows, neighbour_codes] == votes.max(axis=1, keepdims=True)
    winner: IndexArray = neighbour_codes[rows[:, 0], np.argmax(is_top, axis=1)]
    return winner


def _with_bias(x: NDArray[Any]) -> FloatArray:
    x = np.asarray(x, np.float64)
    return np.hstack([x, np.ones((len(x), 1))])


# --- validation -----------------------------------------------------------------------------


def _prepare(
    features: Mapping[str, NDArray[Any]], target: NDArray[Any], train: NDArray[np.bool_], task: Task, bins: int
) -> _Problem:
    target, train = _checked_target(target, train, task)
    matrices = {name: _checked_matrix(name, x, len(target)) for name, x in features.items()}
    if not matrices:
        raise UserInputError("no featurisations given: pass at least one feature matrix to compare")
    n_invalid = {name: int(np.sum(~np.isfinite(x).all(axis=1))) for name, x in matrices.items()}
    valid = np.logical_and.reduce([np.isfinite(x).all(axis=1) for x in matrices.values()])
    _check_some_valid(valid, n_invalid)
    pool, test = np.flatnonzero(train[valid]), np.flatnonzero(~train[valid])
    _check_splits(len(pool), len(test), int(np.sum(~valid)))
    y: NDArray[Any]
    if task == "classification":
        y = strata = _class_codes(target[valid], pool)  # the classes themselves are the strata
    else:
        y = np.asarray(target[valid], np.float64)
        strata = _regression_bins(y, pool, test, bins)
    return _Problem(
        task, {name: x[valid] for name, x in matrices.items()}, y, strata, pool, test, int(np.sum(~valid)), n_invalid
    )


def _checked_target(
    target: NDArray[Any], train: NDArray[np.bool_], task: Task
) -> tuple[NDArray[Any], NDArray[np.bool_]]:
    target, train = np.asarray(target), np.asarray(train)
    if task not in get_args(Task):
        raise UserInputError(f"task {task!r} is not one of {get_args(Task)}")
    if target.ndim != 1:
        raise UserInputError(f"the target has shape {target.shape}; pass one label or value per point (1-d)")
    if task == "regression" and target.dtype.kind not in "iuf":
        raise UserInputError(
            f"the regression target is not numeric (dtype {target.dtype}, e.g. {target[:1].tolist()}); "
            "pass numbers, or use task 'classification' for labels"
        )
    if target.dtype.kind == "f" and np.isnan(target).any():
        raise UserInputError(f"the target has {int(np.isnan(target).sum())} NaN values; drop those points first")
    if train.dtype != np.bool_ or train.shape != target.shape:
        raise UserInputError(
            f"the training mask has dtype {train.dtype} and shape {train.shape}; "
            f"pass one bool per point ({target.shape}), True for the training pool"
        )
    return target, train


def _checked_matrix(name: str, x: NDArray[Any], n_points: int) -> FloatArray:
    matrix = np.asarray(x, np.float64)
    if matrix.ndim != 2 or len(matrix) != n_points:
        raise UserInputError(
            f"featurisation {name!r} has shape {matrix.shape} but the target has {n_points} points; "
            "sample every featurisation at the same points, in the same order, as (n_points, d)"
        )
    return matrix


def _check_some_valid(valid: NDArray[np.bool_], n_invalid: dict[str, int]) -> None:
    for name, count in n_invalid.items():
        if count == len(valid):
            raise UserInputError(
                f"featurisation {name!r} has no data (NaN) at any of the {count} points; "
                "check that it covers the labelled points, or leave it out"
            )
    if not valid.any():
        raise UserInputError(
            f"no point has data in every featurisation (points without data: {n_invalid}); "
            "compare featurisations that cover the same points"
        )


def _check_splits(n_pool: int, n_test: int, n_dropped: int) -> None:
    dropped = f" ({n_dropped} points without data in some featurisation were dropped)" if n_dropped else ""
    if n_pool == 0:
        raise UserInputError(f"no training points{dropped}; mark the training pool with train=True")
    if n_test == 0:
        raise UserInputError(f"no test points{dropped}; leave some points with train=False as the test split")


def _plain(value: Any) -> Any:
    """A numpy scalar as a Python value; class names read from files are often already Python str."""
    return value.item() if isinstance(value, np.generic) else value


def _class_codes(y: NDArray[Any], pool: IndexArray) -> IndexArray:
    """Codes 0..C-1 of the sorted classes, once every class is known to have training points."""
    classes, codes = np.unique(y, return_inverse=True)
    if len(classes) < 2:
        raise UserInputError(
            f"the target has a single class {_plain(classes[0])!r} at the {len(y)} usable points: "
            "balanced accuracy needs at least two; label points of another class too"
        )
    missing = np.setdiff1d(np.arange(len(classes)), codes[pool])
    if len(missing):
        raise UserInputError(
            f"class {_plain(classes[missing[0]])!r} has test points but none in the training pool "
            f"(classes without training points: {classes[missing].tolist()}); add training points for it or drop it"
        )
    return codes


def _regression_bins(y: FloatArray, pool: IndexArray, test: IndexArray, bins: int) -> IndexArray:
    """Quantile bins of the training pool's target; bins left empty by tied values disappear."""
    if np.ptp(y[test]) == 0:
        raise UserInputError(f"the test split's target is constant ({y[test][0]}): R2 is undefined there")
    edges = np.quantile(y[pool], np.linspace(0, 1, bins + 1))[1:-1]
    _, strata = np.unique(np.searchsorted(edges, y, side="right"), return_inverse=True)
    compact: IndexArray = strata
    return compact


# --- draws and scoring ------------------------------------------------------------------------


def _plan_draw(problem: _Problem, lpc: LabelsPerClass, settings: ProtocolSettings) -> _Draw:
    # Stream 0 is "max"; a numeric setting n >= 1 uses stream n, so settings never share draws.
    rng = np.random.default_rng([settings.seed, 0 if lpc == "max" else lpc])
    if lpc == "max":
        resamples = rng.integers(0, len(problem.test), size=(settings.bootstrap, len(problem.test)))
        return _Draw(lpc, [_draw_per_stratum(problem, settings.max_labels, rng)], resamples)
    return _Draw(lpc, [_draw_per_stratum(problem, lpc, rng) for _ in range(settings.repeats)], None)


def _draw_per_stratum(problem: _Problem, per_stratum: int, rng: np.random.Generator) -> IndexArray:
    """Up to `per_stratum` training points of each class (or bin), without replacement."""
    picked = []
    for stratum in np.unique(problem.strata[problem.pool]):
        members = problem.pool[problem.strata[problem.pool] == stratum]
        picked.append(members if len(members) <= per_stratum else rng.choice(members, per_stratum, replace=False))
    return np.sort(np.concatenate(picked))


def _score_draw(problem: _Problem, draw: _Draw) -> Iterator[ProtocolResult]:
    y_test = problem.y[problem.test]
    for name, x in problem.features.items():
        x_test = x[problem.test]
        for method in METHODS:
            predictions = [predict(method, x[idx], problem.y[idx], x_test, problem.task) for idx in draw.train_sets]
            if draw.test_resamples is None:
                scores = np.array([_score(problem.task, y_test, p) for p in predictions])
                value = float(np.nanmean(scores))
            else:
                scores = np.array([_score(problem.task, y_test[r], predictions[0][r]) for r in draw.test_resamples])
                value = _score(problem.task, y_test, predictions[0])
            yield _result(problem, draw, name, method, value, scores)


def _score(task: Task, y_true: NDArray[Any], y_pred: NDArray[Any]) -> float:
    return balanced_accuracy(y_true, y_pred) if task == "classification" else r2(y_true, y_pred)


def _result(problem: _Problem, draw: _Draw, name: str, method: str, value: float, scores: FloatArray) -> ProtocolResult:
    low, high = (float(v) for v in np.nanpercentile(scores, _PERCENTILES))
    return ProtocolResult(
        featurisation=name,
        method=method,
        labels_per_class=draw.labels_per_class,
        metric=METRICS[problem.task],
        value=value,
        low=low,
        high=high,
        draws=len(scores),
        resampling="repeated draws" if draw.test_resamples is None else "test bootstrap",
        n_train=len(draw.train_sets[0]),
        n_test=len(problem.test),
        n_dropped=problem.n_dropped,
        n_invalid=problem.n_invalid[name],
    )


# --- reporting --------------------------------------------------------------------------------


def protocol_table(results: Sequence[ProtocolResult]) -> str:
    """One side-by-side table: a row per (method, labels per class), a column per featurisation.

    Cells read "value [low, high]" (brackets, so negative R2 bounds stay readable). The heading
    names the metric, the interval and the point counts.
    """
    layout = _layout(results)
    per = "labels/bin" if layout["metric"] == METRICS["regression"] else "labels/class"
    header = ["method", per, "train", *layout["columns"]]
    body = [
        [row["method"], str(row["labels_per_class"]), str(row["n_train"])]
        + [_cell(row["cells"][name]) for name in layout["columns"]]
        for row in layout["rows"]
    ]
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]
    lines = [
        "  ".join(text.ljust(width) for text, width in zip(line, widths, strict=True)).rstrip()
        for line in [header, *body]
    ]
    return "\n".join([*_heading(layout), "", *lines])


def results_as_json(results: Sequence[ProtocolResult]) -> dict[str, Any]:
    """The table as plain JSON types: metric, interval, counts, columns, and one entry per row.

    Each row holds method, labels_per_class, n_train, resampling, draws and a cell per column
    ({"value", "low", "high"}); undefined scores (NaN) become null.
    """
    return _layout(results)


def _layout(results: Sequence[ProtocolResult]) -> dict[str, Any]:
    if not results:
        raise ValueError("no results to lay out")
    first = results[0]
    columns = list(dict.fromkeys(r.featurisation for r in results))
    keys = sorted(
        dict.fromkeys((r.method, r.labels_per_class) for r in results),
        key=lambda key: METHODS.index(key[0]) if key[0] in METHODS else len(METHODS),
    )
    rows = []
    for method, lpc in keys:
        cells = {r.featurisation: r for r in results if (r.method, r.labels_per_class) == (method, lpc)}
        some = next(iter(cells.values()))
        rows.append(
            {
                "method": method,
                "labels_per_class": lpc,
                "n_train": some.n_train,
                "resampling": some.resampling,
                "draws": some.draws,
                "cells": {name: _json_cell(cells.get(name)) for name in columns},
            }
        )
    return {
        "metric": first.metric,
        "interval": INTERVAL,
        "n_test": first.n_test,
        "n_dropped": first.n_dropped,
        "n_invalid": {r.featurisation: r.n_invalid for r in results},
        "columns": columns,
        "rows": rows,
    }


def _json_cell(result: ProtocolResult | None) -> dict[str, float | None]:
    if result is None:
        return {"value": None, "low": None, "high": None}
    return {
        key: None if math.isnan(v) else v
        for key, v in (("value", result.value), ("low", result.low), ("high", result.high))
    }


def _cell(cell: dict[str, float | None]) -> str:
    value, low, high = (f"{v:.3f}" if v is not None else "n/a" for v in (cell["value"], cell["low"], cell["high"]))
    return f"{value} [{low}, {high}]"


def _heading(layout: dict[str, Any]) -> list[str]:
    sizes: dict[tuple[str, int], dict[str, None]] = {}  # (resampling, draws) -> the sizes, in order
    for row in layout["rows"]:
        sizes.setdefault((row["resampling"], row["draws"]), {})[str(row["labels_per_class"])] = None
    how = {
        "repeated draws": "mean over {n} training draws",
        "test bootstrap": "whole test split, {n} bootstrap resamples",
    }
    parts = [f"{', '.join(labels)} labels: {how[kind].format(n=n)}" for (kind, n), labels in sizes.items()]
    invalid = ", ".join(f"{name}: {count}" for name, count in layout["n_invalid"].items())
    return [
        f"{layout['metric']}: value [{INTERVAL}]; " + "; ".join(parts),
        f"{layout['n_test']} test points; {layout['n_dropped']} points dropped for lack of data in some featurisation "
        f"(points without data: {invalid})",
    ]
