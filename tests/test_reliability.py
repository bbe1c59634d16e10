"""Faults and what the pipeline does about them: damaged stores, concurrent runs, crashes, broken
scenes, flaky APIs, full disks (docs/reliability.md lists each with its test)."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import warnings
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr
from distributed import Client

from aef_pipeline.catalog import stac_dir
from aef_pipeline.cli import main
from aef_pipeline.load import ReadFailureWarning
from aef_pipeline.lock import StoreLockedError, lock_path
from aef_pipeline.model import load_spec
from aef_pipeline.plan import Period, plan_tasks
from aef_pipeline.run import RunRequest, TaskFailedWarning, run
from aef_pipeline.search import CatalogConfig
from aef_pipeline.store import tile_index, tile_region, written_tiles, zone_attrs
from aef_pipeline.testing import SyntheticCatalog, write_static_catalog
from aef_pipeline.testing.stores import assert_same_stores
from aef_pipeline.verify import verify_store
from tests.sites import BOTH_YEARS, SMALL, SMALL_ARGS

PERIODS = (Period.year(2022),)


@pytest.fixture(scope="module")
def clean_store(tmp_path_factory: pytest.TempPathFactory, static_catalog: CatalogConfig) -> Path:
    out = tmp_path_factory.mktemp("clean") / "field.zarr"
    run(RunRequest(SMALL, PERIODS, out, static_catalog, device="cpu"))
    return out


def _copy(store: Path, target: Path) -> Path:
    """The store and its STAC catalog, copied as a user would (verify checks both)."""
    subprocess.run(["cp", "-r", str(store), str(target)], check=True)
    subprocess.run(["cp", "-r", str(stac_dir(store)), str(stac_dir(target))], check=True)
    return target


def _tile_of(store: Path) -> tuple[int, slice, slice, dict[str, slice]]:
    """Time index, pixel rows and cols, and record position of the first tile-period written."""
    (index, (tile, *_)), *_ = sorted(written_tiles(store, "33N").items())
    extent = (zone_attrs(store, "33N") or {})["aef:tiles"]
    return index, *tile_region(tile, extent), tile_index(tile, extent)


def test_verify_passes_a_clean_store(clean_store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    result = verify_store(clean_store)
    assert result.checked == 1
    assert result.ok, result.problems
    assert main(["verify", str(clean_store)]) == 0
    assert "1 tile-periods checked, 0 problems" in capsys.readouterr().out


def test_verify_names_a_damaged_shard(clean_store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = _copy(clean_store, tmp_path / "damaged.zarr")
    embedding = zarr.open_array(str(store / "33N" / "embedding"), mode="r+")
    index, rows, cols, _ = _tile_of(store)
    observed = np.argwhere(np.asarray(zarr.open_array(str(store / "33N" / "observations"))[index, rows, cols]) > 0)[0]
    embedding[index, rows.start + observed[0], cols.start + observed[1], :] = -128  # an observed pixel made nodata
    assert main(["verify", str(store)]) == 1
    printed = capsys.readouterr().out
    assert "33N_c026_r0266" in printed
    assert "checksum" in printed
    assert "observed px are nodata" in printed


def test_verify_names_a_record_from_another_model(clean_store: Path, tmp_path: Path) -> None:
    store = _copy(clean_store, tmp_path / "other.zarr")
    records = zarr.open_array(str(store / "33N" / "tile_record"), mode="r+")
    index, _, _, position = _tile_of(store)
    where = (index, position["tile_row"].start, position["tile_col"].start)
    record = json.loads(str(records[where]))
    records[where] = json.dumps({**record, "model": "paper"})
    (problem,) = verify_store(store).problems
    assert "model 'paper'" in problem
    assert "'tiny'" in problem


def test_verify_names_stale_metadata_and_stac(clean_store: Path, tmp_path: Path) -> None:
    store = _copy(clean_store, tmp_path / "stale.zarr")
    root = json.loads((store / "zarr.json").read_text())
    metadata = root["consolidated_metadata"]["metadata"]["33N/embedding"]
    metadata["shape"] = [2, *metadata["shape"][1:]]  # says a period more than the group holds
    (store / "zarr.json").write_text(json.dumps(root))
    collection_file = stac_dir(store) / "collection.json"
    collection = json.loads(collection_file.read_text())
    collection["extent"]["spatial"]["bbox"] = [[0.0, 0.0, 1.0, 1.0]]
    collection_file.write_text(json.dumps(collection))
    problems = verify_store(store).problems
    assert any("consolidated metadata gives 33N/embedding shape (2," in p for p in problems), problems
    assert any("STAC Collection extent [0.0, 0.0, 1.0, 1.0] is not that of what is written" in p for p in problems)
    shutil.rmtree(stac_dir(store))
    assert any("no STAC catalog at" in p for p in verify_store(store).problems)


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


def _catalog_copy(catalog: SyntheticCatalog, target: Path) -> Path:
    """A static copy of the catalog whose files a test may damage."""
    static = write_static_catalog(catalog)  # relative hrefs: the copy reads its own files
    subprocess.run(["cp", "-r", str(catalog.root), str(target)], check=True)
    return target / static.relative_to(catalog.root)


def _cogs(root: Path, year: str, band: str = "") -> list[Path]:
    return sorted(p for p in root.rglob(f"*_{year}*/*.tif") if not band or p.stem == band)


def test_a_truncated_cog_is_skipped_with_a_warning_and_a_report_entry(
    earth_search_catalog: SyntheticCatalog, tmp_path: Path
) -> None:
    catalog = _catalog_copy(earth_search_catalog, tmp_path / "cat")
    broken = _cogs(tmp_path / "cat", "2022", "B04")[2]
    broken.write_bytes(broken.read_bytes()[:5000])  # cut inside the image data
    with pytest.warns(ReadFailureWarning, match="B04"):
        report = run(RunRequest(SMALL, PERIODS, tmp_path / "f.zarr", CatalogConfig(str(catalog)), device="cpu"))
    (task,) = report.tasks
    assert task.status == "done"
    assert any("B04" in failure for failure in task.read_failures)
    assert verify_store(tmp_path / "f.zarr").ok


def test_a_tile_whose_scenes_all_fail_is_marked_failed_and_the_run_exits_non_zero(
    earth_search_catalog: SyntheticCatalog, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    catalog = _catalog_copy(earth_search_catalog, tmp_path / "cat")
    for cog in _cogs(tmp_path / "cat", "2022"):
        cog.write_bytes(b"")  # every 2022 file empty: nothing of that year can be read
    out = tmp_path / "f.zarr"
    options = ["--years", "2021-2022", "--device", "cpu", "--workers", "1"]
    argv = ["run", "--stac", str(catalog), "--bbox", *SMALL_ARGS, *options, "--out", str(out)]
    with pytest.warns(TaskFailedWarning, match="could be read"):
        assert main(argv) == 1
    printed = capsys.readouterr().out
    assert "1 tile-periods done" in printed
    assert "1 failed" in printed
    assert "failed 33N_c026_r0266 2022" in printed
    assert "unreadable" in printed
    result = verify_store(out)
    assert result.checked == 1
    assert result.ok


def test_a_reader_that_fails_every_read_fails_the_tile_through_the_reader_seam(
    clean_store: Path, static_catalog: CatalogConfig, tmp_path: Path
) -> None:
    from aef_pipeline.environment import TaskEnvironment
    from aef_pipeline.testing.readers import FailingReader, SlowReader

    failing = RunRequest(
        SMALL,
        PERIODS,
        tmp_path / "f.zarr",
        static_catalog,
        device="cpu",
        environment=TaskEnvironment(reader=FailingReader()),
    )
    with pytest.warns(ReadFailureWarning, match="vanished"), pytest.warns(TaskFailedWarning, match="could be read"):
        (task,) = run(failing).tasks
    assert task.status == "failed"
    assert task.error.startswith("TileUnreadableError: nothing of tile 33N_c026_r0266 2022 could be read")
    assert not task.traceback  # an expected failure: its one line is the whole story
    assert verify_store(failing.output).checked == 0
    slow = dataclasses.replace(failing, environment=TaskEnvironment(reader=SlowReader(0.01)))
    (task,) = run(slow).tasks
    assert task.status == "done"
    assert_same_stores(clean_store, slow.output)  # a slow reader changes nothing but the time


def test_a_bug_keeps_its_whole_traceback_in_the_report_and_on_stderr(
    static_catalog: CatalogConfig, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from aef_pipeline.model import LoadedModel, STPEncoder, build_model
    from aef_pipeline.run import TaskContext, attempt_task

    class BrokenEncoder(STPEncoder):
        def forward(self, *args: Any) -> Any:
            raise ZeroDivisionError("a bug in the encoder")

    spec = load_spec("tiny")
    broken = LoadedModel(spec, BrokenEncoder(spec), build_model(spec)[1])
    request = RunRequest(SMALL, PERIODS, tmp_path / "f.zarr", static_catalog, device="cpu")
    with pytest.warns(TaskFailedWarning, match="a bug in the encoder"):
        report = run(
            request, submit=lambda tasks, request: (attempt_task(t, request, TaskContext(broken)) for t in tasks)
        )
    (result,) = report.tasks
    assert result.status == "failed"
    assert result.error == "bug: ZeroDivisionError: a bug in the encoder"
    assert "Traceback (most recent call last)" in result.traceback
    assert "in forward" in result.traceback  # down to the frame that raised
    assert "raise ZeroDivisionError" in capsys.readouterr().err


def test_signed_url_tokens_never_reach_logs_warnings_or_reports(
    earth_search_catalog: SyntheticCatalog, caplog: pytest.LogCaptureFixture
) -> None:
    from aef_pipeline.environment import redacted_logs
    from aef_pipeline.load import load_selection, report_read_failures
    from aef_pipeline.search import open_source, search_tile

    source = open_source(CatalogConfig(str(write_static_catalog(earth_search_catalog))))
    (task,) = plan_tasks(SMALL, PERIODS, load_spec("tiny").core)
    area = task.geobox()
    selection = search_tile(source, area, Period.year(2022), ("B04",))
    # A remote-looking signed URL that cannot be fetched here: every read fails with it in the message.
    signer = lambda href: "https://example.invalid/" + Path(href).name + "?se=2030&sig=SECRET-TOKEN"  # noqa: E731
    with (
        caplog.at_level("DEBUG"),
        pytest.warns(ReadFailureWarning) as warned,
        redacted_logs(),  # as every task reads (environment.applied)
        report_read_failures() as failures,
    ):
        load_selection(selection, area, ("B04",), chunk_rows=None, sign_url=signer)
    assert failures
    assert all("?<redacted>" in failure for failure in failures)
    for text in [*failures, caplog.text, *(str(w.message) for w in warned)]:
        assert "SECRET" not in text


def test_ctrl_c_stops_cleanly_and_a_rerun_resumes(
    static_catalog: CatalogConfig, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from aef_pipeline.model import load_model
    from aef_pipeline.plan import TileTask
    from aef_pipeline.report import TaskResult
    from aef_pipeline.run import Submit, TaskContext, attempt_task

    def interrupted_after_one(client: Client) -> Submit:
        def submit(tasks: list[TileTask], request: RunRequest) -> Generator[TaskResult, None, None]:
            yield attempt_task(tasks[0], request, TaskContext(load_model(request.model)))
            raise KeyboardInterrupt  # what Ctrl-C raises in the main thread while tasks run

        return submit

    out = tmp_path / "f.zarr"
    options = ["--years", "2021-2022", "--device", "cpu", "--workers", "1"]
    argv = ["run", "--stac", static_catalog.url, "--bbox", *SMALL_ARGS, *options, "--out", str(out)]
    assert main(argv, submitter=interrupted_after_one) == 130
    message = capsys.readouterr().err.strip().splitlines()[-1]
    assert "interrupted: 1 of 2 tile-periods complete" in message
    assert "rerun the same command to resume" in message
    assert not lock_path(out).exists()
    assert main(argv) == 0
    assert "1 tile-periods done, 0 without scenes, 1 already complete" in capsys.readouterr().out
    assert verify_store(out).checked == 2


def test_a_worker_killed_mid_task_changes_nothing(
    clean_store: Path, tmp_path: Path, static_catalog: CatalogConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    import signal
    import threading
    import time

    from distributed.system import MEMORY_LIMIT

    from aef_pipeline.cluster import connect, dask_submitter

    request = RunRequest(SMALL, PERIODS, tmp_path / "f.zarr", static_catalog, device="cpu")
    killed: list[int] = []
    # What an earlier LocalCluster in this process leaves behind (dask's nanny writes its
    # pre-spawn environment into ours): our workers must not inherit it.
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "65536")
    with connect(None, 2) as client:
        pids: dict[str, int] = client.run(os.getpid)
        # The allocator settings a local cluster's workers start with (cluster.worker_environ).
        malloc = client.run(lambda: (os.environ.get("MALLOC_ARENA_MAX"), os.environ.get("MALLOC_TRIM_THRESHOLD_")))
        assert set(malloc.values()) == {(os.environ.get("MALLOC_ARENA_MAX", "2"), None)}
        assert set(client.run(lambda: os.environ.get("PYTHONFAULTHANDLER")).values()) == {
            os.environ.get("PYTHONFAULTHANDLER", "1")
        }
        # Each of the 2 workers may hold half the memory, whatever its thread count.
        limits = {w["memory_limit"] for w in client.scheduler_info()["workers"].values()}
        assert limits == {MEMORY_LIMIT // 2}

        def kill_the_busy_worker() -> None:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and not killed:
                busy = [address for address, keys in client.processing().items() if keys]  # type: ignore[no-untyped-call]
                if busy:
                    os.kill(pids[busy[0]], signal.SIGKILL)
                    killed.append(pids[busy[0]])
                time.sleep(0.02)

        killer = threading.Thread(target=kill_the_busy_worker)
        killer.start()
        report = run(request, submit=dask_submitter(client, progress=False))
        killer.join()
        restarted = client.run(lambda: os.environ.get("MALLOC_TRIM_THRESHOLD_"))  # the killed one's successor
        assert set(restarted.values()) == {None}
    assert os.environ["MALLOC_TRIM_THRESHOLD_"] == "65536"  # this process's environment is as it was
    assert killed
    assert [task.status for task in report.tasks] == ["done"]
    assert_same_stores(clean_store, request.output)
    assert verify_store(request.output).ok


def test_a_run_killed_mid_way_is_finished_by_rerunning_it(
    tmp_path: Path, static_catalog: CatalogConfig, clean_two_years: Path
) -> None:
    import signal
    import time

    from aef_pipeline.store import finished

    both = BOTH_YEARS
    out = tmp_path / "f.zarr"
    argv = ["run", "--stac", static_catalog.url, "--bbox", *SMALL_ARGS]
    argv += ["--years", "2021-2022", "--out", str(out), "--device", "cpu", "--workers", "1"]
    process = subprocess.Popen(
        [sys.executable, "-m", "aef_pipeline.cli", *argv],
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    (task_2021,) = plan_tasks(SMALL, both[:1], load_spec("tiny").core)

    def one_recorded() -> bool:
        # Polled while the other process writes: a template it is still creating reads as "not yet".
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                return out.exists() and any(finished(out, task_2021.tile, period) for period in both)
            except Exception:
                return False

    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and process.poll() is None and not one_recorded():
            time.sleep(0.05)
    finally:
        os.killpg(process.pid, signal.SIGKILL)  # the machine dies: client, scheduler and workers at once
    assert process.wait() == -signal.SIGKILL
    assert lock_path(out).exists()  # left behind, stale: its process is gone
    report = run(RunRequest(SMALL, both, out, static_catalog, device="cpu"))
    assert sorted(task.status for task in report.tasks) == ["done", "skipped"]
    assert_same_stores(clean_two_years, out)
    assert verify_store(out).checked == 2


def test_a_flaky_stac_api_is_retried_and_the_field_is_unchanged(stac_api: str, tmp_path: Path) -> None:
    from aef_pipeline.testing.proxy import flaky_proxy

    direct = RunRequest(SMALL, PERIODS, tmp_path / "direct.zarr", CatalogConfig(stac_api), device="cpu")
    run(direct)
    faults = ("ok", "503", "ok", "drop", "500", "ok", "slow")  # more than half the requests go wrong
    with flaky_proxy(stac_api, faults, slow_s=1.5) as url:
        config = CatalogConfig(url, timeout_s=0.5, retries=6, backoff_s=0.05)
        report = run(RunRequest(SMALL, PERIODS, tmp_path / "flaky.zarr", config, device="cpu"))
    assert [task.status for task in report.tasks] == ["done"]
    assert_same_stores(direct.output, tmp_path / "flaky.zarr")


def test_a_stac_api_that_keeps_failing_fails_the_tile_with_its_url(stac_api: str, tmp_path: Path) -> None:
    from aef_pipeline.search import open_source
    from aef_pipeline.testing.proxy import flaky_proxy

    with flaky_proxy(stac_api, ("ok",) * 4 + ("503",) * 1000) as url:  # opens, then fails every search
        config = CatalogConfig(url, timeout_s=2, retries=2, backoff_s=0.01)
        open_source(config)
        with pytest.warns(TaskFailedWarning, match=url):
            report = run(RunRequest(SMALL, PERIODS, tmp_path / "f.zarr", config, device="cpu"))
    (task,) = report.tasks
    assert task.status == "failed"
    assert task.tile in task.error or task.tile in report.summary()
    assert verify_store(tmp_path / "f.zarr").checked == 0  # no record without its data


# --- full disks ----------------------------------------------------------------------------------


def _disk_full_at(monkeypatch: pytest.MonkeyPatch, store: Path, key_part: str) -> list[str]:
    """From now on, zarr's writes of keys under `store` containing `key_part` run out of space
    halfway through, as on a full disk: inside zarr's own atomic write, so its clean-up runs.

    A patch of zarr's private `_put`, not a seam of ours, on purpose: what is tested is that zarr's
    own temporary-file-and-rename leaves the old chunk and no `.partial` behind when the disk fills
    mid-write, which a store wrapper in our code would bypass. The real-tmpfs test below covers the
    same paths without any patch where mounting is allowed."""
    import errno

    import zarr.storage._local as local

    real_put, refused = local._put, []

    def put(path: Path, value: Any, exclusive: bool = False) -> int:
        key = path.relative_to(store).as_posix() if path.is_relative_to(store) else ""
        if key_part not in key:
            return real_put(path, value, exclusive)
        refused.append(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        data = value.as_buffer_like()
        with local._atomic_write(path, "wb", exclusive=exclusive) as handle:
            handle.write(memoryview(data)[: len(data) // 2])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(local, "_put", put)
    return refused


@pytest.mark.parametrize("filled_at", ["embedding/c/1/", "tile_record/c/1/"])  # its data, or its record
def test_a_disk_filling_up_stops_the_run_and_records_stay_truthful(
    filled_at: str,
    tmp_path: Path,
    static_catalog: CatalogConfig,
    clean_two_years: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from aef_pipeline.errors import StorageFullError
    from aef_pipeline.store import describe_store

    request = RunRequest(SMALL, BOTH_YEARS, tmp_path / "f.zarr", static_catalog, device="cpu")
    with monkeypatch.context() as patch:
        refused = _disk_full_at(patch, request.output, filled_at)  # 2022 (time index 1) no longer fits
        with pytest.raises(StorageFullError, match=r"no space left .* \(1 of 2 tile-periods complete and recorded"):
            run(request)
    assert refused
    assert not lock_path(request.output).exists()
    assert not list(request.output.rglob("*.partial"))
    result = verify_store(request.output)
    assert result.checked == 1  # 2021 only: 2022's data (or its record) did not fit
    assert result.ok, result.problems
    assert "not finalised" in describe_store(request.output)
    report = run(request)  # space freed: the same request finishes the job
    assert [task.status for task in report.tasks] == ["skipped", "done"]
    assert verify_store(request.output).checked == 2
    assert "not finalised" not in describe_store(request.output)
    assert_same_stores(clean_two_years, request.output)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 4 MiB file system (tmpfs) to fill up. Mounting needs root; skipped where it is refused
    (the simulated full disk above covers the same paths in-process)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if not shutil.which("mount"):
        pytest.skip("no mount command: cannot make a small file system here")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(disk)], capture_output=True)
    if mounted.returncode:
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def test_a_real_full_disk_fails_the_cli_with_one_line_and_a_rerun_finishes(
    small_disk: Path, static_catalog: CatalogConfig, clean_two_years: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = small_disk / "f.zarr"
    argv = ["run", "--stac", static_catalog.url, "--bbox", *SMALL_ARGS]
    argv += ["--out", str(out), "--device", "cpu", "--workers", "1", "--years"]
    assert main([*argv, "2021"]) == 0
    # Fill the disk, leaving room for the template's new period but not for 2022's shard (~290 kB).
    ballast = small_disk / "ballast"
    stats = os.statvfs(small_disk)
    ballast.write_bytes(bytes(stats.f_bavail * stats.f_frsize - 160 * 1024))
    capsys.readouterr()
    assert main([*argv, "2021-2022"]) == 1
    (line,) = capsys.readouterr().err.strip().splitlines()[-1:]
    assert line.startswith("aef-pipeline: error: no space left on the device of")
    assert "1 of 2 tile-periods complete and recorded" in line
    assert "rerun the same command" in line
    assert not lock_path(out).exists()
    assert not list(out.rglob("*.partial"))
    result = verify_store(out)
    assert result.checked == 1
    assert result.ok, result.problems
    ballast.unlink()
    assert main([*argv, "2021-2022"]) == 0
    assert verify_store(out).checked == 2
    assert_same_stores(clean_two_years, out)


# --- security ------------------------------------------------------------------------------------


class _Payload:
    """Unpickling this creates a file: proof of code run by loading a checkpoint."""

    def __init__(self, sentinel: Path) -> None:
        self.sentinel = sentinel

    def __reduce__(self) -> tuple[Any, tuple[str, str]]:
        return open, (str(self.sentinel), "w")


def test_a_pickle_checkpoint_is_never_unpickled(tmp_path: Path) -> None:
    import torch

    from aef_pipeline.errors import UserInputError
    from aef_pipeline.model import build_model
    from tests.test_bad_inputs import spec_with_weights

    sentinel = tmp_path / "code-ran"
    checkpoint = tmp_path / "payload.pt"
    torch.save({"blocks.0.weight": _Payload(sentinel)}, checkpoint)
    torch.load(checkpoint, weights_only=False)["blocks.0.weight"].close()  # the control: unpickling runs code
    assert sentinel.exists()
    sentinel.unlink()
    for name in ("tiny.pt", "tiny.safetensors"):  # by its name, and disguised as safetensors
        spec = spec_with_weights(tmp_path, name, checkpoint.read_bytes())
        with pytest.raises(UserInputError, match="never pickle"):  # CheckpointError, or the spec refused
            build_model(load_spec(str(spec)))
        assert not sentinel.exists()
    sources = Path(__file__).resolve().parents[1] / "aef_pipeline"
    loaders = [
        f"{p.name}: {line.strip()}"
        for p in sources.rglob("*.py")
        for line in p.read_text().splitlines()
        if any(call in line for call in ("torch.load(", "pickle.load", "cloudpickle.load"))
    ]
    assert not loaders  # and no pickle loader anywhere in the package


CRAFTED_IDS = [
    "../../../../escaped",
    "/tmp/aef-escaped/item",
    "..",
    "a/../../b",
    "..\\..\\windows",
    "%2e%2e%2fenc",
    "~/home",
    "con:",
]


def test_crafted_item_ids_cannot_put_files_outside_the_store(
    earth_search_catalog: SyntheticCatalog,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    catalog = _catalog_copy(earth_search_catalog, tmp_path / "cat")
    items = sorted(p for p in (tmp_path / "cat").rglob("S2*_2022*/*.json") if p.parent.name == p.stem)
    crafted = []
    for number, path in enumerate(items):  # every 2022 item's id is hostile, and unique
        item = json.loads(path.read_text())
        item["id"] = f"{CRAFTED_IDS[number % len(CRAFTED_IDS)]}/{number}/{item['id']}"
        crafted.append(item["id"])
        path.write_text(json.dumps(item))
    assert len(crafted) > 10
    work = tmp_path / "work" / "deep" / "down"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)  # relative ids would land here, or above it
    outside = set(tmp_path.rglob("*"))
    argv = ["run", "--stac", str(catalog), "--bbox", *SMALL_ARGS]
    argv += ["--years", "2022", "--out", "f.zarr", "--device", "cpu", "--workers", "1"]
    assert main(argv) == 0
    assert "1 tile-periods done" in capsys.readouterr().out
    new = {os.path.relpath(p, work) for p in set(tmp_path.rglob("*")) - outside}
    assert sorted({path.split(os.sep)[0] for path in new}) == ["f.runs", "f.stac", "f.zarr"]  # nothing else
    assert not Path("/tmp/aef-escaped").exists()
    (task,) = plan_tasks(SMALL, PERIODS, load_spec("tiny").core)
    from aef_pipeline.store import read_record

    scenes = read_record(work / "f.zarr", task.tile, PERIODS[0])["scenes"]
    assert scenes
    assert set(scenes) <= set(crafted)  # the ids went all the way through, as plain text
