"""Each flow end to end on a LocalCluster of two worker processes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from distributed import LocalCluster

import aef_pipeline
from aef_pipeline.plan import parse_periods
from aef_pipeline.region import read_region
from aef_pipeline.run import RunRequest, run
from aef_pipeline.search import CatalogConfig
from aef_pipeline.testing import SyntheticCatalog, write_static_catalog
from aef_pipeline.testing.stores import assert_same_stores
from aef_pipeline.verify import verify_store
from flows import annual_field


def test_annual_field_flow_on_a_local_cluster(tmp_path: Path, earth_search_catalog: SyntheticCatalog) -> None:
    region = tmp_path / "areas.geojson"
    squares = [(15.057, 46.194, 15.062, 46.198), (15.066, 46.200, 15.073, 46.206)]
    features = [
        {"type": "Feature", "properties": {}, "geometry": {"type": "Polygon", "coordinates": [ring]}}
        for ring in ([[w, s], [e, s], [e, n], [w, n], [w, s]] for w, s, e, n in squares)
    ]
    region.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    stac = str(write_static_catalog(earth_search_catalog))
    years, model = "2022", "tiny"
    flow_store = tmp_path / "f.zarr"
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:  # type: ignore[no-untyped-call]
        argv = ["--region", str(region), "--years", years, "--out", str(flow_store), "--model", model]
        argv += ["--scheduler", cluster.scheduler_address, "--stac", stac, "--device", "cpu"]
        code = annual_field.main(argv)
    assert code == 0
    ds = aef_pipeline.open_embeddings(flow_store, bbox=(15.057, 46.194, 15.073, 46.206))  # both squares
    observed = ds.observations.values > 0
    assert observed.sum() > 5_000
    assert np.allclose(np.linalg.norm(ds.embedding.values[observed], axis=-1), 1.0, atol=0.02)

    verification = verify_store(flow_store)
    assert verification.ok, verification.problems
    assert verification.checked > 0

    # The same request run in this process, without the scheduler, writes the same field.
    area, periods = read_region(region), parse_periods(years, [])
    plain = RunRequest(
        area.bbox, periods, tmp_path / "plain.zarr", CatalogConfig(stac), model=model, device="cpu", region=area
    )
    report = run(plain)
    assert {task.status for task in report.tasks} == {"done"}
    assert_same_stores(flow_store, plain.output)


def test_the_flow_ends_a_full_disk_and_ctrl_c_like_the_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # flows/annual_field.py ends its run through the CLI's run_and_summarise: one line each.
    from aef_pipeline.cli.fields import run_and_summarise
    from aef_pipeline.errors import StorageFullError
    from aef_pipeline.grid import BBox
    from aef_pipeline.plan import Period
    from aef_pipeline.report import RunReport

    request = RunRequest(BBox(15.062, 46.197, 15.068, 46.203), (Period.year(2022),), tmp_path / "f.zarr")

    def full_disk() -> RunReport:
        raise StorageFullError(f"no space left on the device of {request.output} (0 of 1 tile-periods complete)")

    def interrupted() -> RunReport:
        raise KeyboardInterrupt

    assert run_and_summarise(request, full_disk, prog="annual_field") == 1
    assert (
        capsys.readouterr().err
        == f"annual_field: error: no space left on the device of {request.output} (0 of 1 tile-periods complete)\n"
    )
    assert run_and_summarise(request, interrupted, prog="annual_field") == 130
    err = capsys.readouterr().err
    assert err.startswith("annual_field: interrupted: 0 of 1 tile-periods complete")
    assert err.count("\n") == 1
