"""`train-set`: training windows cut on run's data path, checked against the synthetic truth, the
run's own cube, a numpy reference for the statistics, a resumed build and the bad-input contract."""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from collections.abc import Generator, Iterator
from pathlib import Path

import numpy as np
import pytest
import zarr

from aef_pipeline import cli
from aef_pipeline import sentinel2 as s2
from aef_pipeline.cli import training_set
from aef_pipeline.errors import UserInputError
from aef_pipeline.grid import BBox
from aef_pipeline.load import load_selection
from aef_pipeline.model import load_spec
from aef_pipeline.plan import Period, parse_periods, plan_tasks
from aef_pipeline.preprocess import MaskPolicy, preprocess
from aef_pipeline.report import TaskResult
from aef_pipeline.search import CatalogConfig, NoScenesWarning, open_source, search_tile
from aef_pipeline.testing import (
    CatalogSpec,
    RenderedScene,
    SyntheticCatalog,
    build_catalog,
    render_scene,
    serve_catalogs,
)
from aef_pipeline.training import trainset_read as fmt
from aef_pipeline.training.trainset import (
    FramesCappedWarning,
    TrainingSetRequest,
    TrainJob,
    build_training_set,
    evenly_spaced,
    in_process,
    open_training_set,
    window_positions,
)

SITE = ("15.057", "46.194", "15.073", "46.206")
BOX = BBox(15.057, 46.194, 15.073, 46.206)
# Two half-years: two tasks of one tile window, so a build can stop between them.
HALVES = ("2021-01-01/2021-07-01", "2021-07-01/2022-01-01")
WINDOWS = 5


def _halves() -> tuple[Period, ...]:
    return parse_periods(None, list(HALVES))


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> SyntheticCatalog:
    return build_catalog(tmp_path_factory.mktemp("trainset-catalog"), "earth-search", CatalogSpec(years=(2021,)))


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory, synthetic: SyntheticCatalog) -> Iterator[CatalogConfig]:
    with serve_catalogs([synthetic], tmp_path_factory.mktemp("trainset-api")) as url:
        yield CatalogConfig(url, (synthetic.collection_id,))


def _request(output: Path, catalog: CatalogConfig, **options: object) -> TrainingSetRequest:
    return TrainingSetRequest(BOX, _halves(), output, catalog, windows_per_task=WINDOWS, **options)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, api: CatalogConfig) -> Path:
    """A clean build: two tasks of five windows."""
    output = tmp_path_factory.mktemp("built") / "train.zarr"
    report = build_training_set(_request(output, api))
    assert report.finished
    assert not report.failed
    return output


_RENDERED: dict[str, RenderedScene] = {}


def _rendered(catalog: SyntheticCatalog, item_id: str) -> RenderedScene:
    if item_id not in _RENDERED:
        _RENDERED[item_id] = render_scene(catalog.scene_of(item_id))
    return _RENDERED[item_id]


def _pixel_centres(transform: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    a, _, c, _, e, f = transform
    centres = np.arange(size) + 0.5
    return c + centres * a, f + centres * e  # x of each column, y of each row


def test_windows_hold_the_dn_the_catalog_holds(built: Path, synthetic: SyntheticCatalog) -> None:
    """10 m bands equal the COGs' DN less the baseline's offset wherever the pixel was observed,
    clear or cloudy; `clear` is the SCL's clear classes; unimaged pixels are 0."""
    stored = {name: fmt.read(built, name) for name in ("dn", "clear", "n_frames", "scene_ids", "transform")}
    cloudy_checked = 0
    for slot in np.flatnonzero(stored["n_frames"]):
        xs, ys = _pixel_centres(stored["transform"][slot], 32)
        for frame in range(stored["n_frames"][slot]):
            first_product = str(stored["scene_ids"][slot, frame]).split(",")[0]
            scene, truth = synthetic.scene_of(first_product), _rendered(synthetic, first_product)
            x0, y0 = scene.window_origin
            rows10, cols10 = ((y0 - ys) // 10).astype(int), ((xs - x0) // 10).astype(int)
            rows20, cols20 = ((y0 - ys) // 20).astype(int), ((xs - x0) // 20).astype(int)
            scl = truth.scl[np.ix_(rows20, cols20)]
            dn, clear = stored["dn"][slot, frame], stored["clear"][slot, frame]
            observed = dn[0] > 0
            assert not (observed & (scl == s2.SCL_NODATA)).any()
            assert np.array_equal(clear, observed & ~np.isin(scl, sorted(MaskPolicy().invalid_scl)))
            for band in ("B02", "B03", "B04", "B08"):
                raw = truth.dn[band][np.ix_(rows10, cols10)].astype(int)
                want = np.clip(raw - scene.dn_offset, 1, None)
                got = dn[("B02", "B03", "B04", "B08", "B11").index(band)]
                assert np.array_equal(got[observed], want[observed])
                assert not got[raw == 0].any()
            cloudy_checked += int((observed & ~clear).sum())
    assert cloudy_checked > 100  # cloudy observations are stored too, not only clear ones


def test_windows_equal_runs_cube_where_clear(built: Path, api: CatalogConfig) -> None:
    """Every band (the 20 m B11 too) equals what run's load -> preprocess gives those pixels."""
    spec = load_spec("tiny")
    task = plan_tasks(BOX, _halves(), spec.core)[0]
    area = task.geobox().pad(spec.context)
    selection = search_tile(open_source(api), area, task.period, spec.bands)
    cube = preprocess(load_selection(selection, area, spec.bands, chunk_rows=None), selection.scenes, spec.bands, area)
    cube_ms = cube.time.values.astype("datetime64[ms]").astype(np.int64)
    origin = np.array(area.affine)[[2, 5]]
    compared = 0
    for slot in range(WINDOWS):  # task 0's windows
        transform, n = fmt.read(built, "transform")[slot], int(fmt.read(built, "n_frames")[slot])
        row, col = int((origin[1] - transform[5]) // 10), int((transform[2] - origin[0]) // 10)
        for frame in range(n):
            t = fmt.read(built, "time_ms")[slot, frame]
            if t not in cube_ms:  # run drops frames with no clear pixel in the task
                continue
            reflectance = cube.reflectance.values[list(cube_ms).index(t), :, row : row + 32, col : col + 32]
            clear = fmt.read(built, "clear")[slot, frame]
            want = np.clip(np.rint(reflectance * 10_000), 1, None)
            assert np.array_equal(fmt.read(built, "dn")[slot, frame][:, clear], want[:, clear])
            compared += int(clear.sum())
    assert compared > 10_000


def test_frames_sorted_in_their_period_and_padded(built: Path) -> None:
    times, counts, periods = (fmt.read(built, name) for name in ("time_ms", "n_frames", "period_ms"))
    ids, dn = fmt.read(built, "scene_ids"), fmt.read(built, "dn")
    assert counts.shape == (2 * WINDOWS,)
    assert (counts > 0).all()
    for slot, n in enumerate(counts):
        assert (np.diff(times[slot, :n]) > 0).all()
        assert (periods[slot, 0] <= times[slot, :n]).all()
        assert (times[slot, :n] < periods[slot, 1]).all()
        assert (times[slot, n:] == -1).all()
        assert not dn[slot, n:].any()
        assert not any(ids[slot, n:])
        assert all(ids[slot, :n])
    starts = sorted({int(p) for p in periods[:, 0]})
    assert starts == [1609459200000, 1625097600000]  # 2021-01-01 and 2021-07-01 UTC
    assert set(fmt.read(built, "crs")) == {"EPSG:32633"}
    assert set(fmt.read(built, "tile")) == {"33N_c026_r0266"}
    transforms = fmt.read(built, "transform")
    assert (transforms[:, [0, 4]] == [10.0, -10.0]).all()
    assert not (transforms[:, [2, 5]] % 10).any()


def test_the_reader_gives_the_stored_windows(built: Path) -> None:
    data = open_training_set(built)
    assert (data.bands, data.window, len(data)) == (("B02", "B03", "B04", "B08", "B11"), 32, 2 * WINDOWS)
    window = data.window_at(3)
    n = int(fmt.read(built, "n_frames")[3])
    assert window.dn.shape == (n, 5, 32, 32)
    assert window.dn.dtype == np.uint16
    assert window.clear.shape == (n, 32, 32)
    assert window.t_ms.shape == (n,)
    assert np.array_equal(window.dn, fmt.read(built, "dn")[3, :n])
    assert window.period_ms == (1609459200000, 1625097600000)
    with pytest.raises(IndexError):
        data.window_at(len(data))


def test_normalisation_is_log1p_dn_over_the_clear_pixels(built: Path) -> None:
    dn, clear = fmt.read(built, "dn"), fmt.read(built, "clear")
    values = np.log1p(dn.transpose(2, 0, 1, 3, 4)[:, clear].astype(np.float64))  # (band, clear pixel-frames)
    means, stds = open_training_set(built).normalisation
    np.testing.assert_allclose(means, values.mean(axis=1), rtol=1e-12)
    np.testing.assert_allclose(stds, values.std(axis=1), rtol=1e-9)
    spec = load_spec("tiny").normalisation  # made from this test bed: the same order of magnitude
    np.testing.assert_allclose(means, spec.mean, atol=0.5)


def _stop_after_first(jobs: list[TrainJob], request: TrainingSetRequest) -> Generator[TaskResult, None, None]:
    """A submitter that runs the first job, then is interrupted as by Ctrl-C."""
    yield from in_process()(jobs[:1], request)
    raise KeyboardInterrupt


def test_an_interrupted_build_resumes_to_the_clean_builds_set(tmp_path: Path, api: CatalogConfig, built: Path) -> None:
    output = tmp_path / "train.zarr"
    with pytest.raises(KeyboardInterrupt):
        build_training_set(_request(output, api), _stop_after_first)
    with pytest.raises(UserInputError, match=r"is not finished .*: run train-set again to finish it"):
        open_training_set(output)
    fmt.open_array(output, "dn", "r+")[WINDOWS] = 7  # the second task, killed mid-write: no record
    report = build_training_set(_request(output, api))
    assert [t.status for t in report.tasks] == ["skipped", "done"]
    assert report.finished
    assert open_training_set(output).fingerprint == open_training_set(built).fingerprint
    for name in fmt.WINDOW_ARRAYS:
        assert np.array_equal(fmt.read(output, name), fmt.read(built, name)), name  # the same windows, cut alike
    again = build_training_set(_request(output, api))
    assert [t.status for t in again.tasks] == ["skipped", "skipped"]
    assert again.fingerprint == report.fingerprint


def test_frames_over_the_limit_keep_an_evenly_spaced_subset(tmp_path: Path, api: CatalogConfig, built: Path) -> None:
    request = TrainingSetRequest(
        BOX, _halves()[:1], tmp_path / "capped.zarr", api, windows_per_task=WINDOWS, max_frames=3
    )
    with pytest.warns(FramesCappedWarning, match="frames of windows holding more than --max-frames were left out"):
        report = build_training_set(request)
    full, capped = fmt.read(built, "time_ms")[:WINDOWS], fmt.read(request.output, "time_ms")
    counts = fmt.read(built, "n_frames")[:WINDOWS]
    assert report.capped_frames == int((counts - 3).clip(0).sum()) > 0
    for slot, n in enumerate(counts):  # same task key and seed: the same windows as the clean build
        kept = evenly_spaced(np.arange(n), 3)
        assert np.array_equal(capped[slot, : kept.size], full[slot, kept])
    assert evenly_spaced(np.arange(10), 4).tolist() == [0, 3, 6, 9]
    assert evenly_spaced(np.arange(2), 4).tolist() == [0, 1]


def test_window_positions_are_distinct_inside_and_fixed_by_seed_and_key() -> None:
    first = window_positions((160, 176), 32, 16, 0, "aef-33N_c026_r0266-2021-0-144-0-160")
    assert first == window_positions((160, 176), 32, 16, 0, "aef-33N_c026_r0266-2021-0-144-0-160")
    assert len(set(first)) == 16
    assert all(0 <= r <= 128 and 0 <= c <= 144 for r, c in first)
    assert first != window_positions((160, 176), 32, 16, 1, "aef-33N_c026_r0266-2021-0-144-0-160")
    assert first != window_positions((160, 176), 32, 16, 0, "aef-33N_c026_r0266-2022-0-144-0-160")
    assert sorted(window_positions((33, 33), 32, 16, 0, "k")) == [(0, 0), (0, 1), (1, 0), (1, 1)]


def test_refusals_of_the_reader(tmp_path: Path, api: CatalogConfig) -> None:
    with pytest.raises(UserInputError, match="is not a training set: make one with `aef-pipeline train-set"):
        open_training_set(tmp_path)
    zarr.open_group(str(tmp_path / "other.zarr"), mode="w").attrs["title"] = "an embedding store"
    with pytest.raises(UserInputError, match="is not a training set"):
        open_training_set(tmp_path / "other.zarr")
    empty = TrainingSetRequest(BOX, (Period.year(2023),), tmp_path / "empty.zarr", api)  # no scene in 2023
    with pytest.warns(NoScenesWarning):
        report = build_training_set(empty)
    assert report.finished
    assert report.windows == 0
    with pytest.raises(UserInputError, match="holds no window with a clear observation"):
        open_training_set(empty.output)
    shutil.rmtree(empty.output / "task_record")  # a template cut off before any task ran
    with pytest.warns(NoScenesWarning):
        assert build_training_set(empty).finished


def _cli(argv: list[str]) -> int:
    """`aef-pipeline ARGV`, with train-set registered here until the CLI package registers it."""
    parser = cli._parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    if "train-set" in commands.choices:
        return cli.main(argv)
    parser = cli._Parser(prog="aef-pipeline")
    training_set.add_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args))
    except UserInputError as error:
        print(f"aef-pipeline: error: {error}", file=sys.stderr)
        return 2


def test_the_command_builds_on_dask_what_the_library_builds(tmp_path: Path, api: CatalogConfig, built: Path) -> None:
    output = tmp_path / "cli.zarr"
    argv = ["train-set", "--stac", api.url, "--collection", api.collections[0], "--bbox", *SITE]
    argv += ["--period", HALVES[0], "--period", HALVES[1], "--windows", str(WINDOWS), "--out", str(output)]
    assert _cli([*argv, "--workers", "1"]) == 0
    assert open_training_set(output).fingerprint == open_training_set(built).fingerprint


@pytest.mark.parametrize(
    ("options", "phrase"),
    [
        (["--windows", "0"], "--windows 0 is not a count: give 1 or more"),
        (["--max-frames", "0"], "--max-frames 0 is not a count"),
        (["--years", "2015"], "--years '2015' is outside 2017-2024"),
        (["--model", "huge"], "model spec 'huge' not found"),
        (["--collection", "nope"], "collection nope not found"),
        (["--workers", "0"], "--workers 0 is not a process count"),
        (["--out", "{photos}"], "holds something that is not a training set: choose another --out or --overwrite"),
        (["--out", "{built}", "--windows", "4"], "is a training set made with another request"),
    ],
)
def test_bad_inputs_are_one_line_and_write_nothing(
    tmp_path: Path,
    api: CatalogConfig,
    built: Path,
    capsys: pytest.CaptureFixture[str],
    options: list[str],
    phrase: str,
) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "holiday.jpg").write_bytes(b"jpeg")
    options = [option.format(photos=photos, built=built) for option in options]
    out = [] if "--out" in options else ["--out", str(tmp_path / "train.zarr")]
    collection = [] if "--collection" in options else ["--collection", api.collections[0]]
    argv = ["train-set", "--stac", api.url, *collection, "--bbox", *SITE, "--years", "2021", *out, *options]
    before = {p: p.stat().st_mtime_ns for folder in (tmp_path, built) for p in folder.rglob("*")}
    assert _cli(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert phrase in err[0]
    assert {p: p.stat().st_mtime_ns for folder in (tmp_path, built) for p in folder.rglob("*")} == before
    assert json.loads((built / "zarr.json").read_text())["attributes"][fmt.FINISHED] is True
