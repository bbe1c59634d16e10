"""The paper's evaluation protocol: estimators against hand-worked answers, then the whole protocol."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
from sklearn.metrics import balanced_accuracy_score, r2_score

from aef_pipeline.errors import UserInputError
from aef_pipeline.maps.protocol import (
    METHODS,
    LabelsPerClass,
    ProtocolResult,
    ProtocolSettings,
    _plan_draw,
    _prepare,
    balanced_accuracy,
    knn_predict,
    least_squares_probe,
    protocol_table,
    r2,
    results_as_json,
    run_protocol,
)

# A small protocol: a few draws are enough to test the mechanics, and keep the file fast.
FAST = ProtocolSettings(repeats=8, bootstrap=50)


def blobs(n: int, n_classes: int, separation: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gaussian blobs in 16-d, centred `separation` apart along the axes; half the points train."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, n_classes, n)
    x = separation * np.eye(16)[y] + rng.normal(size=(n, 16))
    return x, y, rng.random(n) < 0.5


def by_key(results: list[ProtocolResult]) -> dict[tuple[str, str, Any], ProtocolResult]:
    return {(r.featurisation, r.method, r.labels_per_class): r for r in results}


# --- k-NN on a few 2-d points, worked out by hand ---------------------------------------------

# a at the origin, two b's to its right, c far left.
X2 = np.array([[0.0, 0.0], [3.0, 0.0], [3.0, 1.0], [-5.0, 0.0]])
Y2 = np.array(["a", "b", "b", "c"])


@pytest.mark.parametrize(
    ("query", "k", "expected"),
    [
        ((1.0, 0.0), 1, "a"),  # a at 1, b at 2
        ((1.0, 0.0), 3, "b"),  # a, b, b: the two b's outvote the nearest
        ((-2.0, 0.0), 3, "a"),  # a (2), c (3), b (5): one vote each, the nearest's class wins
        ((1.5, 0.0), 1, "a"),  # a and the first b both at 1.5: the one listed first
        ((1.5, 0.0), 3, "b"),  # a, b, b again
    ],
)
def test_knn_classes_by_hand(query: tuple[float, float], k: int, expected: str) -> None:
    assert knn_predict(X2, Y2, np.array([query]), k, "classification").tolist() == [expected]


def test_knn_equal_distances_rank_in_training_order() -> None:
    swapped = [1, 0, 2, 3]  # the b at (3, 0) now comes before a
    assert knn_predict(X2[swapped], Y2[swapped], np.array([[1.5, 0.0]]), 1, "classification").tolist() == ["b"]


def test_knn_with_fewer_points_than_k_uses_them_all() -> None:
    x, query = np.array([[0.0, 0.0], [4.0, 0.0]]), np.array([[1.0, 0.0]])
    assert knn_predict(x, np.array([7, 9]), query, 3, "classification").tolist() == [7]  # 1-1 tie: nearest
    assert knn_predict(x, np.array([1.0, 3.0]), query, 3, "regression").tolist() == [2.0]


def test_knn_regression_is_the_neighbours_mean() -> None:
    x, y = np.array([[0.0], [1.0], [2.0], [10.0]]), np.array([0.0, 1.0, 2.0, 10.0])
    query = np.array([[0.9], [9.0]])
    np.testing.assert_allclose(knn_predict(x, y, query, 1, "regression"), [1.0, 10.0])
    np.testing.assert_allclose(knn_predict(x, y, query, 3, "regression"), [1.0, 13.0 / 3.0])


def test_knn_many_test_points_are_split_into_blocks_consistently() -> None:
    rng = np.random.default_rng(3)
    x, y, query = rng.normal(size=(3000, 4)), rng.integers(0, 3, 3000), rng.normal(size=(2000, 4))
    distances = ((query[:, None, :] - x[None, :, :]) ** 2).sum(axis=2)
    np.testing.assert_array_equal(knn_predict(x, y, query, 1, "classification"), y[distances.argmin(axis=1)])


# --- the least-squares probe against the normal equations -----------------------------------


def test_probe_matches_the_normal_equations() -> None:
    rng = np.random.default_rng(1)
    x, labels, query = rng.normal(size=(40, 3)), rng.integers(0, 3, 40), rng.normal(size=(25, 3))
    design, query_design = np.hstack([x, np.ones((40, 1))]), np.hstack([query, np.ones((25, 1))])
    weights = np.linalg.inv(design.T @ design) @ design.T @ np.eye(3)[labels]
    expected = np.argmax(query_design @ weights, axis=1)
    np.testing.assert_array_equal(least_squares_probe(x, labels, query, "classification"), expected)
    target = x @ [1.0, -2.0, 0.5] + rng.normal(size=40)
    fitted = query_design @ (np.linalg.inv(design.T @ design) @ design.T @ target)
    np.testing.assert_allclose(least_squares_probe(x, target, query, "regression"), fitted, rtol=1e-10)


def test_probe_on_a_line_by_hand() -> None:
    # Indicator of b on x = 0..3 is fitted by 0.4 x - 0.1, and a's by its complement: b beyond 1.5.
    x, labels = np.array([[0.0], [1.0], [2.0], [3.0]]), np.array(["a", "a", "b", "b"])
    assert least_squares_probe(x, labels, np.array([[1.4], [1.6]]), "classification").tolist() == ["a", "b"]


def test_probe_underdetermined_is_the_minimum_norm_solution() -> None:
    rng = np.random.default_rng(2)
    x, target, query = rng.normal(size=(3, 8)), rng.normal(size=3), rng.normal(size=(5, 8))
    weights = np.linalg.pinv(np.hstack([x, np.ones((3, 1))])) @ target
    expected = np.hstack([query, np.ones((5, 1))]) @ weights
    np.testing.assert_allclose(least_squares_probe(x, target, query, "regression"), expected, atol=1e-10)


# --- metrics ------------------------------------------------------------------------------


def test_balanced_accuracy_by_hand() -> None:
    truth, predicted = np.array([0, 0, 0, 0, 1, 1, 2]), np.array([0, 0, 0, 1, 1, 0, 2])
    assert balanced_accuracy(truth, predicted) == pytest.approx((3 / 4 + 1 / 2 + 1) / 3)
    assert balanced_accuracy(truth, predicted) == pytest.approx(balanced_accuracy_score(truth, predicted))
    assert balanced_accuracy(np.array(["x", "y"]), np.array(["x", "x"])) == pytest.approx(0.5)


def test_r2_by_hand() -> None:
    truth, predicted = np.array([1.0, 2.0, 3.0, 4.0]), np.array([1.0, 2.0, 3.0, 5.0])
    assert r2(truth, predicted) == pytest.approx(1 - 1 / 5)  # residual 1, total 2.25 + 0.25 + 0.25 + 2.25
    assert r2(truth, predicted) == pytest.approx(r2_score(truth, predicted))
    assert np.isnan(r2(np.array([2.0, 2.0]), np.array([2.0, 1.0])))


# --- the protocol -------------------------------------------------------------------------


def test_separable_blobs_score_near_one_and_noise_near_chance() -> None:
    x, y, train = blobs(1600, 4, separation=8.0)
    noise = np.random.default_rng(9).normal(size=x.shape)
    results = by_key(run_protocol({"blobs": x, "noise": noise}, y, train, "classification", FAST))
    for method in METHODS:
        assert results["blobs", method, "max"].value > 0.98
        # Chance is 1/4; ~800 test points put a chance score within ~0.04 of it, blobs far above.
        assert abs(results["noise", method, "max"].value - 0.25) < 0.07
        assert abs(results["noise", method, 10].value - 0.25) < 0.07


def test_error_bars_contain_the_estimate_and_draws_differ() -> None:
    x, y, train = blobs(600, 3, separation=1.5)
    results = by_key(run_protocol({"field": x}, y, train, "classification", FAST))
    for method in METHODS:
        at_max, at_one = results["field", method, "max"], results["field", method, 1]
        assert at_max.low <= at_max.value <= at_max.high
        assert at_max.high - at_max.low > 0.01
        assert (at_max.resampling, at_max.draws) == ("test bootstrap", 50)
        assert at_one.high - at_one.low > 0.01
        assert (at_one.resampling, at_one.draws) == ("repeated draws", 8)
        assert 0.4 < at_max.value < 0.95  # noisy: neither chance nor perfect


def test_the_seed_makes_results_reproducible() -> None:
    x, y, train = blobs(300, 3, separation=1.5)
    first = run_protocol({"field": x}, y, train, "classification", FAST)
    assert run_protocol({"field": x}, y, train, "classification", FAST) == first
    other = run_protocol({"field": x}, y, train, "classification", ProtocolSettings(repeats=8, bootstrap=50, seed=1))
    assert [r.value for r in other] != [r.value for r in first]


def test_nan_rows_are_dropped_from_every_featurisation_and_counted() -> None:
    x, y, train = blobs(400, 3, separation=2.0)
    a, b = x.copy(), x[:, ::-1].copy()
    a[[0, 1, 2]] = np.nan
    b[2, 5] = b[3, 0] = np.nan
    results = run_protocol({"a": a, "b": b}, y, train, "classification", FAST)
    keep = np.ones(400, bool)
    keep[[0, 1, 2, 3]] = False
    reference = run_protocol({"a": a[keep], "b": b[keep]}, y[keep], train[keep], "classification", FAST)
    assert [r.value for r in results] == [r.value for r in reference]
    assert {r.n_dropped for r in results} == {4}
    assert {(r.featurisation, r.n_invalid) for r in results} == {("a", 3), ("b", 2)}
    assert {r.n_test for r in results} == {int(np.sum(~train[keep]))}


def test_labels_per_class_are_respected() -> None:
    rng = np.random.default_rng(4)
    y = np.repeat([0, 1, 2], [400, 5, 50])  # all training points; then a test point per class
    y = np.concatenate([y, [0, 1, 2]])
    train = np.arange(len(y)) < 455
    x = rng.normal(size=(len(y), 4))
    settings = ProtocolSettings(labels_per_class=(1, 10, "max"), max_labels=300, repeats=5)
    results = run_protocol({"f": x}, y, train, "classification", settings)
    assert {r.labels_per_class: r.n_train for r in results} == {1: 3, 10: 10 + 5 + 10, "max": 300 + 5 + 50}
    problem = _prepare({"f": x}, y, train, "classification", settings.regression_bins)
    expected: list[tuple[LabelsPerClass, list[int]]] = [(1, [1, 1, 1]), (10, [10, 5, 10]), ("max", [300, 5, 50])]
    for lpc, per_class in expected:
        draw = _plan_draw(problem, lpc, settings)
        for picked in draw.train_sets:
            assert np.bincount(y[picked], minlength=3).tolist() == per_class
            assert train[picked].all()
        assert len({tuple(picked) for picked in draw.train_sets}) == (1 if lpc == "max" else settings.repeats)


def test_regression_of_a_linear_target() -> None:
    rng = np.random.default_rng(5)
    x = rng.normal(size=(800, 8))
    target = x @ rng.normal(size=8) + 3.0
    train = rng.random(800) < 0.5
    settings = ProtocolSettings(repeats=5, bootstrap=30, regression_bins=5)
    results = by_key(run_protocol({"field": x}, target, train, "regression", settings))
    assert results["field", "linear probe", "max"].value > 0.999
    assert results["field", "linear probe", "max"].metric == "R2"
    assert results["field", "3-NN", "max"].value > 0.5
    assert results["field", "1-NN", 1].n_train == 5  # one point per quantile bin
    assert results["field", "1-NN", 10].n_train == 50


def points(n: int = 40) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(6)
    return rng.normal(size=(n, 3)), np.arange(n) % 2, np.arange(n) < n // 2


def named(codes: np.ndarray) -> np.ndarray:
    return np.asarray([("a", "b", "c")[c] for c in codes], dtype=object)


def all_nan_in_one(x: np.ndarray) -> dict[str, np.ndarray]:
    return {"good": x, "empty.zarr": np.full_like(x, np.nan)}


def disjoint(x: np.ndarray) -> dict[str, np.ndarray]:
    first, second = x.copy(), x.copy()
    first[: len(x) // 2], second[len(x) // 2 :] = np.nan, np.nan
    return {"first": first, "second": second}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda x, y, t: ({"f": x}, np.zeros_like(y), t, "classification"), "single class 0"),
        (lambda x, y, t: ({"f": x}, y, np.zeros_like(t), "classification"), "no training points"),
        (lambda x, y, t: ({"f": x}, y, np.ones_like(t), "classification"), "no test points"),
        (lambda x, y, t: ({"f": x, "short.zarr": x[:-1]}, y, t, "classification"), "'short.zarr' has shape"),
        (lambda x, y, t: ({"f": x}, y.astype(str), t, "regression"), "regression target is not numeric"),
        (lambda x, y, t: (all_nan_in_one(x), y, t, "classification"), "'empty.zarr' has no data"),
        (lambda x, y, t: (disjoint(x), y, t, "classification"), "no point has data in every featurisation"),
        (lambda x, y, t: ({"f": x}, np.where(t, 0, np.arange(len(y)) % 3), t, "classification"), "class 1 has test"),
        # class names as read from a vector file: Python strings in an object array
        (lambda x, y, t: ({"f": x}, named(np.where(t, 0, np.arange(len(y)) % 3)), t, "classification"), "'b' has test"),
        (lambda x, y, t: ({"f": x}, y, t.astype(int), "classification"), "training mask has dtype int"),
        (lambda x, y, t: ({}, y, t, "classification"), "no featurisations"),
    ],
)
def test_bad_input_is_named(change: Any, message: str) -> None:
    features, target, train, task = change(*points())
    with pytest.raises(UserInputError, match=message):
        run_protocol(features, target, train, task, FAST)


def test_nan_drops_are_mentioned_when_a_split_empties() -> None:
    x, y, train = points()
    x[~train] = np.nan
    with pytest.raises(UserInputError, match=r"no test points \(20 points without data"):
        run_protocol({"f": x}, y, train, "classification", FAST)


def test_bad_settings_are_named() -> None:
    with pytest.raises(UserInputError, match="labels per class 0"):
        ProtocolSettings(labels_per_class=(0, "max"))
    with pytest.raises(UserInputError, match="repeats is 0"):
        ProtocolSettings(repeats=0)


# --- reporting ----------------------------------------------------------------------------


def test_table_has_a_column_per_featurisation_and_json_round_trips() -> None:
    x, y, train = blobs(300, 3, separation=3.0)
    x[0] = np.nan
    results = run_protocol({"aef.zarr": x, "raw-pixel baseline": x[:, :4]}, y, train, "classification", FAST)
    table = protocol_table(results)
    lines = table.splitlines()
    header = next(line for line in lines if line.startswith("method"))
    assert header.split("  ")[-1].strip() == "raw-pixel baseline"
    assert "aef.zarr" in header
    assert "1 points dropped" in table
    assert len([line for line in lines if line.startswith(METHODS)]) == len(METHODS) * 3
    cell = by_key(results)["aef.zarr", "3-NN", 10]
    row = next(line for line in lines if line.startswith("3-NN") and line.split()[1] == "10")
    assert f"{cell.value:.3f} [{cell.low:.3f}, {cell.high:.3f}]" in row

    layout = results_as_json(results)
    assert json.loads(json.dumps(layout, allow_nan=False)) == layout
    assert layout["columns"] == ["aef.zarr", "raw-pixel baseline"]
    assert [(row["method"], row["labels_per_class"]) for row in layout["rows"]][:3] == [
        ("1-NN", 1),
        ("1-NN", 10),
        ("1-NN", "max"),
    ]
    assert layout["n_dropped"] == 1
    assert layout["rows"][0]["cells"]["aef.zarr"]["value"] == by_key(results)["aef.zarr", "1-NN", 1].value
