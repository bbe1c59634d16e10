"""The training engine: a short CPU training on the test bed, resume, torchrun, export -> run --model."""

from __future__ import annotations

import itertools
import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr
from safetensors.torch import load_file

from aef_pipeline.grid import BBox
from aef_pipeline.model import load_spec
from aef_pipeline.plan import Period
from aef_pipeline.run import RunRequest, run
from aef_pipeline.search import CatalogConfig
from aef_pipeline.testing import CatalogSpec, SyntheticCatalog, build_catalog, serve_catalogs
from aef_pipeline.training import logbook
from aef_pipeline.training.checkpoints import latest_checkpoint
from aef_pipeline.training.engine import TrainRequest, batch_indices, learning_rate, train
from aef_pipeline.training.trainset import TrainingSetRequest, build_training_set
from tests.refusals import assert_refused

SITE = BBox(15.057, 46.194, 15.073, 46.206)
SITE_ARGS = ["15.057", "46.194", "15.073", "46.206"]
# 140 steps, batch 8: held-out L1 0.43 of step 0's and the uniformity term 0.88 of its start (it rises
# first, then falls), 51 s; 200 steps took 75 s of CI for the same two checks (2026-12-05).
STEPS = 140


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> SyntheticCatalog:
    return build_catalog(tmp_path_factory.mktemp("training-catalog"), "earth-search", CatalogSpec(years=(2021,)))


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory, synthetic: SyntheticCatalog) -> Iterator[CatalogConfig]:
    with serve_catalogs([synthetic], tmp_path_factory.mktemp("training-api")) as url:
        yield CatalogConfig(url, (synthetic.collection_id,))


# `tiny`'s architecture, narrower and on 16 px windows: the engine's tests exercise every code path
# of a real run at a tenth of `tiny`'s cost (docs/training.md has the documented `tiny` run).
MICRO = """
name = "micro"
window = 16
context = 4
depth = 1
output_dim = 64
mlp_ratio = 2
bands = [BANDS]
[widths]
space = 32
time = 16
precision = 16
[heads]
space = 2
time = 2
[timecode]
frequencies = 16
shortest_days = 1.0
longest_days = 5844.0
[normalisation]
mean = [6.5, 6.9, 6.9, 7.9, 7.7]
std = [0.6, 0.4, 0.7, 0.5, 0.7]
source = "placeholder: training uses the training set's own"
[weights]
seed = 0
"""
BANDS = '"B02", "B03", "B04", "B08", "B11"'


@pytest.fixture(scope="module")
def micro(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("specs") / "micro.toml"
    path.write_text(MICRO.replace("BANDS", BANDS))
    return str(path)


@pytest.fixture(scope="module")
def training_set(tmp_path_factory: pytest.TempPathFactory, api: CatalogConfig, micro: str) -> Path:
    """One year of the test bed's site: 48 windows of 16 px, every frame (at most 16)."""
    output = tmp_path_factory.mktemp("set") / "train.zarr"
    report = build_training_set(
        TrainingSetRequest(SITE, (Period.year(2021),), output, api, model=micro, windows_per_task=48, max_frames=16)
    )
    assert report.finished
    return output


@pytest.fixture(scope="module")
def request_for(micro: str):
    def make(data: Path, out: Path, **options: object) -> TrainRequest:
        settings: dict[str, object] = {"steps": 6, "batch_size": 4, "device": "cpu", "progress": False}
        settings.update({"eval_every": 3, **options})
        return TrainRequest(data=data, model=micro, out=out, **settings)  # type: ignore[arg-type]

    return make


def _parameters(run_dir: Path) -> dict[str, torch.Tensor]:
    checkpoint = latest_checkpoint(run_dir)
    assert checkpoint is not None
    return load_file(str(checkpoint / "model.safetensors"))


def test_batches_visit_every_window_once_per_epoch_and_repeat_by_seed():
    seen = np.concatenate([batch_indices(step, 4, 10, seed=3) for step in range(5)])
    assert sorted(seen[:10].tolist()) == list(range(10))
    assert sorted(seen[10:20].tolist()) == list(range(10))
    assert np.array_equal(batch_indices(7, 4, 10, 3), batch_indices(7, 4, 10, 3))
    assert not np.array_equal(batch_indices(0, 4, 10, 3), batch_indices(0, 4, 10, 4))


def test_learning_rate_warms_up_then_decays_to_zero():
    request = TrainRequest(Path("d"), "tiny", Path("o"), steps=100, learning_rate=1.0, warmup=10)
    rates = [learning_rate(step, request) for step in range(100)]
    assert rates[0] == pytest.approx(0.1)
    assert rates[9] == pytest.approx(1.0)
    assert rates[10] == pytest.approx(1.0)
    assert rates[99] == pytest.approx(1 / 90)
    assert all(a >= b for a, b in itertools.pairwise(rates[9:]))


def test_a_short_cpu_training_learns(training_set: Path, tmp_path: Path, request_for):
    """CI's training check: every loss finite, the held-out reconstruction L1 of the fixed evaluation
    batch down by at least 20 % from step 0, the uniformity term down."""
    report = train(request_for(training_set, tmp_path / "run", steps=STEPS, batch_size=8, eval_every=STEPS // 4))
    records = logbook.read(tmp_path / "run")
    steps = [r for r in records if not r.get("eval")]
    assert len(steps) == STEPS
    assert all(
        np.isfinite([r[k] for k in ("loss", "reconstruction", "uniformity", "consistency")]).all() for r in steps
    )
    first, last = report.first_eval, report.last_eval
    assert last["reconstruction"] <= 0.8 * first["reconstruction"], (first, last)
    assert last["uniformity"] < first["uniformity"], (first, last)
    assert (tmp_path / "run" / "curves.png").stat().st_size > 10_000
    assert load_spec(report.spec).training is not None


def test_resume_continues_bit_identically(training_set: Path, tmp_path: Path, request_for):
    train(request_for(training_set, tmp_path / "whole"))

    def interrupt(step: int, losses: dict[str, float]) -> None:
        if step == 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(request_for(training_set, tmp_path / "parts", checkpoint_every=100), on_step=interrupt)
    assert latest_checkpoint(tmp_path / "parts").name == "step-000004"  # type: ignore[union-attr]
    train(request_for(training_set, tmp_path / "parts", resume=True))
    whole, parts = _parameters(tmp_path / "whole"), _parameters(tmp_path / "parts")
    assert whole.keys() == parts.keys()
    assert all(torch.equal(whole[k], parts[k]) for k in whole)
    steps = [r["step"] for r in logbook.read(tmp_path / "parts") if not r.get("eval")]
    assert steps == list(range(1, 7))


def test_sigterm_stops_after_the_step_in_progress_with_a_checkpoint(training_set: Path, tmp_path: Path, request_for):
    """What a cluster's preemption sends: the run finishes its step, checkpoints it and stops."""

    def preempt(step: int, losses: dict[str, float]) -> None:
        if step == 3:
            os.kill(os.getpid(), signal.SIGTERM)

    with pytest.raises(KeyboardInterrupt):
        train(request_for(training_set, tmp_path / "run", checkpoint_every=100), on_step=preempt)
    assert latest_checkpoint(tmp_path / "run").name == "step-000003"  # type: ignore[union-attr]
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is removed again


def test_torchrun_with_two_gloo_processes_ends_with_identical_parameters(
    training_set: Path, tmp_path: Path, micro: str
):
    out = tmp_path / "ddp"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", str(_free_port()),
        "-m", "aef_pipeline.cli", "train", "--data", str(training_set), "--out", str(out), "--steps", "3",
        "--model", micro, "--batch-size", "4", "--device", "cpu", "--quiet",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env, check=False)
    # The head too: a rank that aborts prints its fatal error and stacks first, then a long list
    # of extension modules (which alone filled the tail of a CI failure, 2026-12-04).
    assert done.returncode == 0, _head_and_tail(done.stderr)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2
    first, second = summary["parameter_sha256_by_rank"]
    assert first == second


def _head_and_tail(text: str, keep: int = 2500) -> str:
    return text if len(text) <= 2 * keep else f"{text[:keep]}\n[...]\n{text[-keep:]}"


def test_an_exported_model_runs_the_pipeline_and_says_it_is_trained(
    training_set: Path, tmp_path: Path, api: CatalogConfig, request_for
):
    report = train(request_for(training_set, tmp_path / "run", steps=2))
    field = tmp_path / "field.zarr"
    request = RunRequest(SITE, (Period.year(2021),), field, api, model=str(report.spec), device="cpu")
    assert not run(request).failed
    zone = xr.open_zarr(field, group="33N", consolidated=False)
    assert bool(zone.attrs["aef:trained"])
    assert "trained by run" in zone.attrs["aef:model_weights"]
    assert "untrained" not in zone.attrs.get("aef:notice", "")


@pytest.mark.parametrize(
    ("extra", "phrase"),
    [
        (["--steps", "2"], "holds a training run"),
        (["--steps", "2", "--resume", "--seed", "1"], "was started with seed"),
        (["--steps", "2", "--resume", "--model", "tiny"], "16 px windows but model tiny"),
        (["--minutes", "0"], "--minutes 0"),
        (["--steps", "1", "--batch-size", "1"], "--batch-size 1"),
    ],
)
def test_refusals_touch_nothing(extra, phrase, trained_once: Path, training_set: Path, micro: str, capsys):
    argv = ["train", "--data", str(training_set), "--out", str(trained_once), "--quiet", "--batch-size", "4", *extra]
    if "--model" not in extra:
        argv += ["--model", micro]
    assert_refused(argv, phrase, trained_once.parent, capsys)


@pytest.fixture(scope="module")
def trained_once(training_set: Path, tmp_path_factory: pytest.TempPathFactory, request_for) -> Path:
    out = tmp_path_factory.mktemp("trained-once") / "run"
    train(request_for(training_set, out, steps=1))
    return out


def test_refusals_of_data_and_devices(training_set: Path, tmp_path: Path, micro: str, capsys):
    new = ["--out", str(tmp_path / "new"), "--steps", "1", "--quiet"]
    assert_refused(["train", "--data", str(tmp_path), *new], "training set", tmp_path, capsys)
    if not torch.cuda.is_available():
        assert_refused(["train", "--data", str(training_set), *new, "--device", "cuda"], "GPU", tmp_path, capsys)
    (tmp_path / "a-file").write_text("")
    assert_refused(
        ["train", "--data", str(training_set), "--out", str(tmp_path / "a-file"), "--steps", "1", "--model", micro],
        "is a file",
        tmp_path,
        capsys,
    )
    assert not (tmp_path / "new").exists()


def test_a_checkpoint_that_changed_is_refused(training_set: Path, tmp_path: Path, request_for, micro: str, capsys):
    out = tmp_path / "run"
    train(request_for(training_set, out, steps=1))
    checkpoint = latest_checkpoint(out)
    assert checkpoint is not None
    weights = checkpoint / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-4] + b"\0\0\0\0")
    argv = ["train", "--data", str(training_set), "--out", str(out), "--steps", "1", "--batch-size", "4", "--resume"]
    assert_refused([*argv, "--model", micro, "--quiet"], "does not have the sha256", tmp_path, capsys)


def test_a_training_set_of_other_bands_is_refused(training_set: Path, tmp_path: Path, capsys):
    other = tmp_path / "other.toml"
    other.write_text(MICRO.replace("BANDS", '"B02", "B03", "B04", "B08", "B12"'))
    argv = ["train", "--data", str(training_set), "--out", str(tmp_path / "run"), "--steps", "1", "--model", str(other)]
    assert_refused(argv, "holds bands B02, B03, B04, B08, B11 but model micro reads", tmp_path, capsys)


def test_text_alignment_adds_a_clip_term_from_a_file(training_set: Path, tmp_path: Path, request_for):
    """Two texts per window, at the first windows' centres, in 2021: the run logs a finite text term."""
    import geopandas as gpd
    from shapely.geometry import Point

    from aef_pipeline.training.trainset import open_training_set

    data = open_training_set(training_set)
    rows = []
    rng = np.random.default_rng(0)
    for i in range(len(data)):
        window = data.window_at(i)
        a, _, c, _, e, f = window.transform
        for offset in (4.5, 11.5):
            rows.append(
                {"geometry": Point(c + offset * a, f + offset * e), "time": "2021-06-01", "vector": rng.normal(size=8)}
            )
    texts = tmp_path / "texts.parquet"
    gpd.GeoDataFrame(rows, crs=window.crs).to_parquet(texts)
    train(request_for(training_set, tmp_path / "run", steps=3, text=texts))
    logged = [r["text"] for r in logbook.read(tmp_path / "run") if not r.get("eval")]
    assert len(logged) == 3
    assert all(np.isfinite(logged))
    assert min(logged) > 0  # 8 windows x 2 texts: every step has negatives


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
