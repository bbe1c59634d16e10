"""The pipeline end to end: CLI on a LocalCluster against the local STAC API, split runs, bad input."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from distributed import Client
from pyproj import Transformer

import aef_pipeline
from aef_pipeline.cli import main
from aef_pipeline.grid import BBox
from aef_pipeline.model import load_spec
from aef_pipeline.plan import Period, plan_tasks, task_window
from aef_pipeline.run import RunRequest, run
from aef_pipeline.search import CatalogConfig
from aef_pipeline.store import zones_in
from aef_pipeline.testing import CatalogSpec, Site, SyntheticCatalog, build_catalog, write_static_catalog
from aef_pipeline.testing.scenes import DEFAULT_SITE
from aef_pipeline.testing.server import free_port
from aef_pipeline.testing.stores import assert_same_stores
from aef_pipeline.verify import verify_store
from tests.sites import SMALL, SMALL_ARGS

SITE = ["15.057", "46.194", "15.073", "46.206"]


def test_cli_run_on_a_local_cluster(
    tmp_path: Path, static_catalog: CatalogConfig, clean_two_years: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """One worker running both tasks side by side (they take turns on its encoder while the other
    reads) gives the store that one task after another in this process gives."""
    out = tmp_path / "field.zarr"
    argv = ["run", "--stac", static_catalog.url, "--bbox", *SMALL_ARGS]
    argv += ["--years", "2021-2022", "--out", str(out), "--device", "cpu", "--workers", "1", "--tasks-per-worker", "2"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "2 tile-periods done" in printed
    assert_same_stores(clean_two_years, out)
    ds = aef_pipeline.open_embeddings(out, bbox=SMALL)  # the area, not the whole tile
    assert [str(t)[:4] for t in ds.time.values] == ["2021", "2022"]
    assert ds.rio.crs.to_epsg() == 32633
    vectors = ds.embedding.values
    observed = ds.observations.values > 0
    norms = np.linalg.norm(vectors, axis=-1)
    assert observed.sum() > 0.9 * observed[0].size  # the area holds data both years
    assert np.allclose(norms[observed], 1.0, atol=0.02)
    assert np.isnan(vectors[~observed]).all()
    assert main(["info", str(out)]) == 0
    assert "tile-periods written 2/2" in capsys.readouterr().out


def test_a_rerun_of_a_finished_store_starts_no_cluster(
    tmp_path: Path, clean_two_years: Path, static_catalog: CatalogConfig, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "field.zarr"
    shutil.copytree(clean_two_years, out)

    def no_cluster(client: object) -> None:
        raise AssertionError("a cluster was started for a run with nothing to do")

    argv = ["run", "--stac", static_catalog.url, "--bbox", *SMALL_ARGS, "--years", "2021-2022", "--out", str(out)]
    assert main([*argv, "--device", "cpu"], submitter=no_cluster) == 0  # type: ignore[arg-type]
    assert "0 tile-periods done, 0 without scenes, 2 already complete, 0 failed" in capsys.readouterr().out
    assert_same_stores(clean_two_years, out)


@pytest.fixture(scope="module")
def tile_edge_catalog(tmp_path_factory: pytest.TempPathFactory) -> CatalogConfig:
    """A site the edge between tiles 33N c026 and c027 runs through (at about 15.2387 E)."""
    spec = CatalogSpec(
        site=Site(lon=15.2387, lat=46.2), years=(2022,), revisit_days=120, duplicate_index=-1, swath_edge_index=-1
    )
    catalog = build_catalog(tmp_path_factory.mktemp("edge"), "earth-search", spec)
    return CatalogConfig(str(write_static_catalog(catalog)))


def _chunk_times(store: Path) -> dict[Path, int]:
    return {f: f.stat().st_mtime_ns for f in store.glob("*/*/c/**/*") if f.is_file()}


def test_two_halves_added_to_one_store_equal_one_run_over_the_whole(
    tmp_path: Path, tile_edge_catalog: CatalogConfig
) -> None:
    """The west half (tile c026), then the east half (the rest of c026 and tile c027, which the
    store did not hold), equal one run over the whole, value for value; rerunning writes nothing."""
    whole = BBox(15.2337, 46.197, 15.2437, 46.203)
    halves = [BBox(15.2337, 46.197, 15.2380, 46.203), BBox(15.2380, 46.197, 15.2437, 46.203)]
    periods = (Period.year(2022),)
    run(RunRequest(whole, periods, tmp_path / "one.zarr", tile_edge_catalog, device="cpu"))
    grown = tmp_path / "grown.zarr"
    first = run(RunRequest(halves[0], periods, grown, tile_edge_catalog, device="cpu"))
    assert {t.tile for t in first.tasks} == {"33N_c026_r0266"}
    second = run(RunRequest(halves[1], periods, grown, tile_edge_catalog, device="cpu"))
    assert {t.tile for t in second.tasks} == {"33N_c026_r0266", "33N_c027_r0266"}
    assert_same_stores(tmp_path / "one.zarr", grown)
    assert np.isfinite(aef_pipeline.open_embeddings(grown, bbox=whole).embedding.values).any()
    assert verify_store(grown).ok
    settled = _chunk_times(grown)
    third = run(RunRequest(whole, periods, grown, tile_edge_catalog, device="cpu"))
    assert {t.status for t in third.tasks} == {"skipped"}
    assert _chunk_times(grown) == settled  # nothing it had recorded was written again


def test_cost_follows_the_bbox_not_the_tile() -> None:
    spec = load_spec("tiny")
    small = BBox(DEFAULT_SITE.lon - 0.004, DEFAULT_SITE.lat - 0.004, DEFAULT_SITE.lon + 0.004, DEFAULT_SITE.lat + 0.004)
    (task,) = plan_tasks(small, (Period.year(2022),), spec.core)
    assert task.pixels <= (100 + 2 * spec.core) ** 2  # ~0.6 x 0.9 km, not a 1920 px tile
    r0, r1, c0, c1 = task.window
    assert r0 % spec.core == c0 % spec.core == r1 % spec.core == c1 % spec.core == 0
    assert task_window(task.tile, small, spec.core) == task.window


def test_a_bbox_across_a_zone_edge_plans_both_zones() -> None:
    tasks = plan_tasks(BBox(17.99, 46.0, 18.01, 46.01), (Period.year(2022),), load_spec("tiny").core)
    assert {task.tile.zone for task in tasks} == {33, 34}


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--years", "2015-2016"], "--years '2015-2016' is outside 2017-2024"),
        (["--years", "2024-2020"], "inverted range"),
        (["--period", "2021-03-01"], "--period '2021-03-01' is not understood"),
        (["--years", "2022", "--model", "huge"], "model spec 'huge' not found"),
        (["--years", "2022", "--scheduler", "tcp://127.0.0.1:9"], "dask scheduler tcp://127.0.0.1:9 did not answer"),
    ],
)
def test_bad_run_arguments_are_one_line_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    out = tmp_path / "field.zarr"
    code = main(["run", "--stac", "http://127.0.0.1:9", "--bbox", *SITE, "--out", str(out), *argv])
    err = capsys.readouterr().err
    assert code == 2
    assert message in err
    assert err.count("\n") == 1
    assert not out.exists()


def test_a_bbox_with_three_numbers_is_a_one_line_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["run", "--bbox", "1", "2", "3", "--out", "x.zarr"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "argument --bbox: expected 4 arguments" in err
    assert err.count("\n") == 1


def test_an_output_that_is_not_our_store_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "photos"
    out.mkdir()
    (out / "holiday.jpg").write_bytes(b"jpeg")
    catalog = "demo"
    code = main(["run", "--stac", catalog, "--bbox", *SITE, "--years", "2022", "--out", str(out), "--workers", "1"])
    assert code == 2
    assert "holds something that is not an embedding store" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["holiday.jpg"]


@pytest.fixture
def external_scheduler(tmp_path: Path) -> Iterator[str]:
    """`dask scheduler` and two `dask worker` processes, as on a cluster."""
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    dask = str(Path(sys.executable).parent / "dask")
    log = (tmp_path / "dask.log").open("w")
    processes = [
        subprocess.Popen(
            [dask, "scheduler", "--host", "127.0.0.1", "--port", str(port), "--dashboard-address", ":0"],
            stdout=log,
            stderr=log,
        )
    ]
    processes += [
        subprocess.Popen(
            [dask, "worker", address, "--nworkers", "1", "--nthreads", "1", "--no-dashboard"], stdout=log, stderr=log
        )
        for _ in range(2)
    ]
    try:
        yield address
    finally:
        for process in reversed(processes):
            process.terminate()
        for process in processes:
            process.wait(timeout=30)
        log.close()


def test_an_external_scheduler_gives_the_same_store(
    tmp_path: Path, static_catalog: CatalogConfig, clean_two_years: Path, external_scheduler: str
) -> None:
    """Two workers of a scheduler started apart, a task each: the store a run in this process gives."""
    argv = ["run", "--stac", static_catalog.url, "--bbox", *SMALL_ARGS, "--years", "2021-2022", "--device", "cpu"]
    with Client(external_scheduler, timeout="30s") as client:  # type: ignore[no-untyped-call]
        client.wait_for_workers(2, timeout=60)
    assert main([*argv, "--out", str(tmp_path / "remote.zarr"), "--scheduler", external_scheduler]) == 0
    assert_same_stores(clean_two_years, tmp_path / "remote.zarr")


def test_a_bbox_across_a_zone_edge_writes_both_zone_groups(tmp_path: Path) -> None:
    site = Site(lon=18.0, lat=46.2)  # the 33/34 zone edge runs through the site
    spec = CatalogSpec(
        site=site, years=(2022,), revisit_days=60, duplicate_index=-1, overcast_index=-1, swath_edge_index=-1
    )
    catalog = CatalogConfig(str(write_static_catalog(build_catalog(tmp_path / "cat", "earth-search", spec))))
    bbox = BBox(17.995, 46.195, 18.005, 46.205)
    run(RunRequest(bbox, (Period.year(2022),), tmp_path / "field.zarr", catalog, device="cpu"))
    assert zones_in(tmp_path / "field.zarr") == ["33N", "34N"]
    # Points just either side of the edge, each in its own zone's group, both computed.
    for zone, lon in (("33N", 17.9995), ("34N", 18.0005)):
        ds = aef_pipeline.open_embeddings(tmp_path / "field.zarr", zone=zone, bbox=bbox).isel(time=0)
        epsg = int(ds.rio.crs.to_epsg())
        x, y = Transformer.from_crs(4326, epsg, always_xy=True).transform(lon, 46.2)
        vector = ds.embedding.sel(x=x, y=y, method="nearest").values
        assert np.isfinite(vector).all(), zone
        assert abs(np.linalg.norm(vector) - 1) < 0.02


def test_a_config_file_with_flags_over_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "run.toml"
    config.write_text('bbox = [15.057, 46.194, 15.073, 46.206]\nyears = "2021"\nmodel = "huge"\nstac = "demo"\n')
    # The file names a model that does not exist; the flag overrides it and the plan runs offline.
    assert main(["plan", "--config", str(config), "--model", "tiny"]) == 0
    printed = capsys.readouterr().out
    assert "1 tasks" in printed
    assert "GB to write (int8)" in printed
    assert main(["plan", "--config", str(config)]) == 2
    assert "model spec 'huge' not found" in capsys.readouterr().err
    config.write_text("colour = 'red'\n")
    assert main(["plan", "--config", str(config)]) == 2
    assert "unknown option colour" in capsys.readouterr().err


def test_config_values_take_the_shape_of_their_flags(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "run.toml"
    config.write_text(
        'bbox = [15.057, 46.194, 15.073, 46.206]\nperiod = "2022-03-01/2022-09-01"\n'
        'collection = "sentinel-2-c1-l2a"\nstac = "demo"\n'
    )
    assert main(["plan", "--config", str(config)]) == 0
    assert "2022-03-01_2022-09-01" in capsys.readouterr().out


def test_a_dry_run_is_a_plan_of_values(earth_search_catalog: SyntheticCatalog) -> None:
    from aef_pipeline.run import dry_run

    catalog = CatalogConfig(str(write_static_catalog(earth_search_catalog)))
    bbox = BBox(15.057, 46.194, 15.073, 46.206)
    request = RunRequest(bbox, (Period.year(2021), Period.year(2022)), Path("unused.zarr"), catalog)
    plan = dry_run(request)
    spec = load_spec("tiny")
    tasks = plan_tasks(bbox, request.periods, spec.core)
    assert [cost.task for cost in plan.costs] == tasks
    assert plan.pixels == sum(task.pixels for task in tasks)
    assert all(cost.scenes > 0 for cost in plan.costs)
    rows, cols = tasks[0].geobox().pad(spec.context).shape
    assert plan.costs[0].read_bytes == plan.costs[0].scenes * rows * cols * (2 * 5 + 1)  # 5 uint16 bands + SCL
    assert plan.store_bytes == plan.pixels * (64 + 2)  # int8 vectors and the int16 observation count
    assert plan.flops > 0
    assert not Path("unused.zarr").exists()  # a dry run writes nothing
    assert plan.lines()[-2].startswith(f"{len(tasks)} tasks, {plan.pixels:,} px")
