"""Faults and what the pipeline does about them: damaged stores, concurrent runs, crashes, broken
scenes, flaky APIs, full disks (docs/reliability.md lists each with its test)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import zarr

from aef_pipeline.cli import main
from aef_pipeline.grid import BBox
from aef_pipeline.lock import StoreLockedError, lock_path
from aef_pipeline.plan import Period
from aef_pipeline.run import RunRequest, run
from aef_pipeline.search import CatalogConfig
from aef_pipeline.testing import SyntheticCatalog, write_static_catalog
from aef_pipeline.verify import verify_store

SMALL = BBox(15.062, 46.197, 15.068, 46.203)  # one tile, a few windows
PERIODS = (Period.year(2022),)


@pytest.fixture(scope="module")
def static_catalog(earth_search_catalog: SyntheticCatalog) -> CatalogConfig:
    return CatalogConfig(str(write_static_catalog(earth_search_catalog)))


@pytest.fixture(scope="module")
def clean_store(tmp_path_factory: pytest.TempPathFactory, static_catalog: CatalogConfig) -> Path:
    out = tmp_path_factory.mktemp("clean") / "field.zarr"
    run(RunRequest(SMALL, PERIODS, out, static_catalog, device="cpu"))
    return out


def _copy(store: Path, target: Path) -> Path:
    subprocess.run(["cp", "-r", str(store), str(target)], check=True)
    return target


def test_verify_passes_a_clean_store(clean_store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    result = verify_store(clean_store)
    assert result.checked == 1 and result.ok, result.problems
    assert main(["verify", str(clean_store)]) == 0
    assert "1 tile-periods checked, 0 problems" in capsys.readouterr().out


def test_verify_names_a_damaged_shard(clean_store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = _copy(clean_store, tmp_path / "damaged.zarr")
    embedding = zarr.open_array(str(store / "33N" / "embedding"), mode="r+")
    observed = np.argwhere(np.asarray(zarr.open_array(str(store / "33N" / "observations"))[0]) > 0)[0]
    embedding[0, observed[0], observed[1], :] = -128  # one observed pixel turned to nodata
    assert main(["verify", str(store)]) == 1
    printed = capsys.readouterr().out
    assert "33N_c026_r0266" in printed and "checksum" in printed and "observed px are nodata" in printed


def test_verify_names_a_record_from_another_model(clean_store: Path, tmp_path: Path) -> None:
    store = _copy(clean_store, tmp_path / "other.zarr")
    records = zarr.open_array(str(store / "33N" / "tile_record"), mode="r+")
    where = tuple(np.argwhere(np.asarray(records[:]) != "")[0])
    record = json.loads(str(records[where]))
    records[where] = json.dumps({**record, "model": "paper"})
    (problem,) = verify_store(store).problems
    assert "model 'paper'" in problem and "'tiny'" in problem


def test_a_second_run_on_a_locked_store_is_refused(
    clean_store: Path, tmp_path: Path, static_catalog: CatalogConfig
) -> None:
    store = _copy(clean_store, tmp_path / "busy.zarr")
    lock = lock_path(store)
    lock.write_text(json.dumps({"host": os.uname().nodename, "pid": os.getpid(), "started": "now"}))  # alive
    before = sorted(p.stat().st_mtime_ns for p in store.rglob("*"))
    with pytest.raises(StoreLockedError, match="being written by another run"):
        run(RunRequest(SMALL, PERIODS, store, static_catalog, device="cpu", overwrite=True))
    assert sorted(p.stat().st_mtime_ns for p in store.rglob("*")) == before  # nothing touched
    assert lock.exists()


def test_a_stale_lock_is_taken_over(clean_store: Path, tmp_path: Path, static_catalog: CatalogConfig) -> None:
    store = _copy(clean_store, tmp_path / "stale.zarr")
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    lock_path(store).write_text(json.dumps({"host": os.uname().nodename, "pid": gone.pid, "started": "then"}))
    report = run(RunRequest(SMALL, PERIODS, store, static_catalog, device="cpu"))
    assert [t.status for t in report.tasks] == ["skipped"]  # resumed: the tile was already complete
    assert not lock_path(store).exists()
