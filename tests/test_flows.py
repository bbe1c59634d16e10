"""Each flow end to end on a LocalCluster of two worker processes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from distributed import LocalCluster

import aef_pipeline
from aef_pipeline.testing import SyntheticCatalog, write_static_catalog
from flows import annual_field


def test_annual_field_flow_on_a_local_cluster(tmp_path: Path, earth_search_catalog: SyntheticCatalog) -> None:
    region = tmp_path / "areas.geojson"
    squares = [(15.057, 46.194, 15.062, 46.198), (15.066, 46.200, 15.073, 46.206)]
    region.write_text(json.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": {}, "geometry": {"type": "Polygon", "coordinates": [
            [[w, s], [e, s], [e, n], [w, n], [w, s]]]}} for w, s, e, n in squares]}))  # fmt: skip
    stac = str(write_static_catalog(earth_search_catalog))
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:  # type: ignore[no-untyped-call]
        argv = ["--region", str(region), "--years", "2022", "--out", str(tmp_path / "f.zarr"),
                "--scheduler", cluster.scheduler_address, "--stac", stac, "--device", "cpu"]  # fmt: skip
        code = annual_field.main(argv)
    assert code == 0
    ds = aef_pipeline.open_embeddings(tmp_path / "f.zarr")
    observed = ds.observations.values > 0
    assert observed.sum() > 5_000
    assert np.allclose(np.linalg.norm(ds.embedding.values[observed], axis=-1), 1.0, atol=0.02)
