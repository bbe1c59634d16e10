"""The documented training run (issue 18): `tiny` trained on one site of the labelled synthetic
world, evaluated on another site next to the untrained encoder and the raw-pixel baseline.

    python benchmarks/training_run.py --work runs/doc --minutes 25 [--size-km 4.8] [--seed 0]

Steps, each printed as the `aef-pipeline` command a user would type, with its wall time:
  a. demo-catalog of the training site A and of the evaluation site B (about 22 km apart)
  b. train-set on site A (a few hundred 32 px windows)
  c. a 20-step calibration run, then train for the budget: --steps sized from the measured step
     time, so the learning rate decays linearly to zero as the budget ends (--minutes as a guard)
  d. run on site B with the untrained `tiny` and with the trained W/run/model.toml
  e. evaluate both fields with the raw-pixel baseline (the paper's protocol)
  f. field quality on site B (aef_pipeline.training.quality): neighbour cosine inside parcels,
     the 2 px lattice ratio, the seam ratio, and the teacher-student cosine on windows of site B
  g. the table: metric | target | untrained | trained | raw baseline | met?
Everything lands in --work; the figures in WORK/results.json. docs/training.md has a run's output.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shlex
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

SITE_A = (15.065, 46.2)  # demo-catalog's default site: the training site
SITE_B = (15.30, 46.32)  # about 22 km north-east: the evaluation site, never seen in training
YEAR = "2022"
CALIBRATION_STEPS = 20
# Of the budget, what the sized schedule may use: evaluations every 50 steps and the final
# checkpoint and export come on top of the calibrated step time.
BUDGET_SHARE = 0.95
TARGETS = {
    "accuracy_margin": 0.25,
    "neighbour_cosine": 0.9,
    "lattice_ratio": 0.98,
    "seam_ratio": 0.95,
    "teacher_student": 0.9,
}


@dataclass
class Journal:
    """The commands run so far, with their wall times."""

    work: Path
    steps: list[dict[str, Any]] = field(default_factory=list)

    def run(self, name: str, *arguments: str, env: dict[str, str] | None = None) -> str:
        """`aef-pipeline ARGUMENTS` in a subprocess (with `env` added to the environment), its
        output echoed and returned; stops the whole run when it fails."""
        prefix = "".join(f"{key}={value} " for key, value in (env or {}).items())
        shown = prefix + "aef-pipeline " + " ".join(shlex.quote(a) for a in arguments)
        print(f"\n[{name}] $ {shown}", flush=True)
        began = time.perf_counter()
        command = [sys.executable, "-m", "aef_pipeline.cli", *arguments]
        process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, **(env or {})}
        )
        assert process.stdout is not None
        lines = []
        for line in process.stdout:
            print("    " + line.rstrip(), flush=True)
            lines.append(line)
        seconds = time.perf_counter() - began
        if process.wait():
            sys.exit(f"[{name}] failed (exit {process.returncode}) after {seconds:.0f} s: {shown}")
        print(f"[{name}] {seconds:.1f} s", flush=True)
        self.steps.append({"step": name, "command": shown, "seconds": round(seconds, 1)})
        return "".join(lines)

    def timed(self, name: str, seconds: float, what: str) -> None:
        print(f"[{name}] {seconds:.1f} s", flush=True)
        self.steps.append({"step": name, "command": what, "seconds": round(seconds, 1)})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True, help="a new or empty working directory")
    parser.add_argument("--minutes", type=float, default=25.0, help="training budget in minutes (default 25)")
    parser.add_argument("--size-km", type=float, default=4.8, help="side of each site (default 4.8)")
    parser.add_argument("--seed", type=int, default=0, help="world, windows and training seed (default 0)")
    parser.add_argument("--train-windows", type=int, default=640, help="training windows wanted (default 640)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads of train and run (default 1: see docs/training.md)"
    )
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    work: Path = args.work
    if work.exists() and any(work.iterdir()):
        sys.exit(f"--work {work} is not empty: choose a new directory")
    work.mkdir(parents=True, exist_ok=True)
    began = time.perf_counter()
    journal = Journal(work)
    bbox_a = make_site(journal, work / "train-cat", SITE_A, args.size_km, args.seed)
    bbox_b = make_site(journal, work / "eval-cat", SITE_B, args.size_km, args.seed)
    make_training_set(journal, work / "train-cat", bbox_a, work / "train.zarr", args.train_windows, args.seed)
    training = train(journal, work, args.minutes, args.batch_size, args.seed, args.threads)
    fields = make_fields(journal, work, bbox_b, args.threads)
    protocol = evaluate(journal, work, fields)
    quality = field_quality(journal, work, bbox_b, fields, args.seed)
    results: dict[str, Any] = {
        "arguments": {k: str(v) for k, v in vars(args).items()},
        "sites": {"train": {"centre": SITE_A, "bbox": bbox_a}, "eval": {"centre": SITE_B, "bbox": bbox_b}},
        "steps": journal.steps,
        "training": training,
        "protocol": protocol,
        "quality": quality,
        "targets": TARGETS,
        "wall_seconds": round(time.perf_counter() - began, 1),
    }
    (work / "results.json").write_text(json.dumps(results, indent=1))
    print("\n" + render_table(results))
    print(f"\nwall time {results['wall_seconds'] / 60:.1f} min; results in {work / 'results.json'}")


# --- a, b: sites and the training set --------------------------------------------------------


def make_site(journal: Journal, out: Path, site: tuple[float, float], size_km: float, seed: int) -> list[float]:
    """The labelled world around `site` for YEAR, with its truth points; returns the bbox it printed."""
    output = journal.run(
        f"demo-catalog {out.name}",
        *("demo-catalog", str(out), "--world", "labelled", "--size-km", f"{size_km:g}", "--years", YEAR),
        *("--seed", str(seed), "--site", f"{site[0]:g}", f"{site[1]:g}"),
    )
    found = re.search(r"bbox (\S+) (\S+) (\S+) (\S+),", output)
    assert found is not None, "demo-catalog prints the catalog's bbox"
    return [float(v) for v in found.groups()]


def make_training_set(journal: Journal, catalog: Path, bbox: list[float], out: Path, wanted: int, seed: int) -> None:
    """About `wanted` windows over the site: --windows is per task, so divide by the tasks the bbox makes."""
    from aef_pipeline.grid import BBox
    from aef_pipeline.model import load_spec
    from aef_pipeline.plan import Period, plan_tasks

    tasks = plan_tasks(BBox(bbox[0], bbox[1], bbox[2], bbox[3]), (Period.year(int(YEAR)),), load_spec("tiny").core)
    per_task = math.ceil(wanted / len(tasks))
    print(f"\n{len(tasks)} task(s) over the training bbox: --windows {per_task}")
    journal.run(
        f"train-set {out.name}",
        *("train-set", "--stac", str(catalog / "catalog.json"), "--bbox", *(f"{v:.4f}" for v in bbox)),
        *("--years", YEAR, "--out", str(out), "--model", "tiny", "--windows", str(per_task), "--max-frames", "48"),
        *("--seed", str(seed)),
    )


# --- c: training --------------------------------------------------------------------------------


def train(journal: Journal, work: Path, minutes: float, batch: int, seed: int, threads: int) -> dict[str, Any]:
    """A short calibration run measures the step time; the real run then gets --steps sized to
    the budget, so its learning rate decays to zero when the time is up. `train` has no thread
    option: torch's thread count is set through OMP_NUM_THREADS."""
    common: tuple[str, ...] = ("--data", str(work / "train.zarr"), "--model", "tiny", "--batch-size", str(batch))
    common += ("--device", "cpu", "--seed", str(seed), "--quiet")
    env = {"OMP_NUM_THREADS": str(threads)}
    calibrate = ("--out", str(work / "calibrate"), "--steps", str(CALIBRATION_STEPS))
    journal.run("train calibration", "train", *common, *calibrate, env=env)
    calibration = json.loads((work / "calibrate" / "summary.json").read_text())
    per_step = calibration["seconds"] / calibration["steps"]
    steps = max(1, int(minutes * 60 * BUDGET_SHARE / per_step))
    print(f"\ncalibration: {per_step:.3f} s per step of {batch} windows -> --steps {steps} for {minutes:g} min")
    budget = ("--out", str(work / "run"), "--steps", str(steps), "--minutes", f"{minutes:g}")
    journal.run("train", "train", *common, *budget, env=env)
    summary = json.loads((work / "run" / "summary.json").read_text())
    return {
        "calibration_seconds_per_step": round(per_step, 4),
        "steps_asked": steps,
        "steps": summary["steps"],
        "seconds": round(summary["seconds"], 1),
        "windows_per_second": round(summary["windows_per_second"], 2),
        "threads": threads,
        "first_eval": summary["first_eval"],
        "last_eval": summary["last_eval"],
    }


# --- d, e: fields and the protocol ---------------------------------------------------------------


def make_fields(journal: Journal, work: Path, bbox: list[float], threads: int) -> dict[str, Path]:
    """Site B encoded by the untrained `tiny` and by the trained spec."""
    fields = {"untrained": work / "untrained.zarr", "trained": work / "trained.zarr"}
    models = {"untrained": "tiny", "trained": str(work / "run" / "model.toml")}
    for name, out in fields.items():
        journal.run(
            f"run {name}",
            *("run", "--stac", str(work / "eval-cat" / "catalog.json"), "--bbox", *(f"{v:.4f}" for v in bbox)),
            *("--years", YEAR, "--out", str(out), "--model", models[name], "--device", "cpu", "--workers", "1"),
            *("--threads", str(threads)),
        )
    return fields


def evaluate(journal: Journal, work: Path, fields: dict[str, Path]) -> dict[str, Any]:
    out = work / "protocol.json"
    journal.run(
        "evaluate",
        *("evaluate", "--points", str(work / "eval-cat" / "truth" / "labels.geojson"), "--property", "class"),
        *("--fields", *(str(p) for p in fields.values())),
        *("--baseline-stac", str(work / "eval-cat" / "catalog.json"), "--json", str(out)),
    )
    report: dict[str, Any] = json.loads(out.read_text())
    return report


# --- f: field quality ----------------------------------------------------------------------------


def field_quality(
    journal: Journal, work: Path, bbox: list[float], fields: dict[str, Path], seed: int
) -> dict[str, dict[str, float]]:
    """The three field measures of each field on site B, and each encoder's teacher-student cosine
    on windows cut from site B (a small training set of it, which nothing trains on)."""
    windows = work / "eval-windows.zarr"
    journal.run(
        "train-set eval-windows",
        *("train-set", "--stac", str(work / "eval-cat" / "catalog.json"), "--bbox", *(f"{v:.4f}" for v in bbox)),
        *("--years", YEAR, "--out", str(windows), "--model", "tiny", "--windows", "64", "--max-frames", "48"),
        *("--seed", str(seed + 1)),
    )
    began = time.perf_counter()
    models = {"untrained": "tiny", "trained": str(work / "run" / "model.toml")}
    quality = {name: field_measures(path, bbox, seed) for name, path in fields.items()}
    for name, model in models.items():
        quality[name]["teacher_student"] = teacher_student(model, windows, seed)
    what = "aef_pipeline.training.quality on both fields and encoders (python API)"
    journal.timed("field quality", time.perf_counter() - began, what)
    return quality


def field_measures(path: Path, bbox: list[float], seed: int) -> dict[str, float]:
    """Seam ratio (16 px window cores), 2 px lattice ratio, and neighbour cosine inside parcels,
    on the field under the site's bbox, cropped to start at a window-core boundary of the UTM grid."""
    from aef_pipeline import open_embeddings
    from aef_pipeline.encode import seam_ratio
    from aef_pipeline.model import load_spec
    from aef_pipeline.testing.world import make_world
    from aef_pipeline.training.quality import lattice_ratio, neighbour_cosine_within, parcel_ids, unit_vectors

    core = load_spec("tiny").core
    ds = open_embeddings(path, bbox=(bbox[0], bbox[1], bbox[2], bbox[3]), period=YEAR)
    vectors = ds["embedding"].isel(time=0).transpose("band", "y", "x")
    x, y = ds["x"].values, ds["y"].values
    row, col = core_anchor(x, y, core)
    embedding = unit_vectors(vectors.values[:, row:, col:])
    parcels = parcel_ids(x[col:], y[row:], ds.rio.crs.to_wkt(), make_world("labelled", seed).parcel_deg)
    return {
        "seam_ratio": seam_ratio(embedding, core),
        "lattice_ratio": lattice_ratio(embedding, 2),
        "neighbour_cosine": neighbour_cosine_within(embedding, parcels),
        "pixels_with_data": int(np.isfinite(embedding[0]).sum()),
    }


def core_anchor(x: np.ndarray, y: np.ndarray, core: int, resolution: float = 10.0) -> tuple[int, int]:
    """(row, col) of the first pixel whose top-left corner lies on the window-core lattice (core
    boundaries every `core` pixels from the UTM grid's origin), given pixel-centre coordinates."""
    left, top = round((x[0] - resolution / 2) / resolution), round((y[0] + resolution / 2) / resolution)
    return top % core, -left % core


def teacher_student(model: str, windows: Path, seed: int) -> float:
    from aef_pipeline.model import build_model, load_spec
    from aef_pipeline.training.quality import teacher_student_cosine
    from aef_pipeline.training.trainset import open_training_set

    encoder, _ = build_model(load_spec(model))
    data = open_training_set(windows)
    cut = [data.window_at(i) for i in range(len(data))]
    return teacher_student_cosine(encoder, cut, np.random.default_rng(seed), drop_share=0.5)


# --- g: the table --------------------------------------------------------------------------------


def accuracy_rows(protocol: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per method at 10 labels per class: both fields, the stronger raw baseline, met?"""
    rows = []
    for entry in protocol["rows"]:
        if entry["labels_per_class"] != 10:
            continue
        cells = {name: (cell or {}).get("value") for name, cell in entry["cells"].items()}
        untrained, trained = cells.get("untrained.zarr"), cells.get("trained.zarr")
        raw = max(v for k, v in cells.items() if k.startswith("raw") and v is not None)
        met = trained is not None and untrained is not None and trained >= raw
        met = met and trained >= untrained + TARGETS["accuracy_margin"]  # type: ignore[operator]
        rows.append({"method": entry["method"], "untrained": untrained, "trained": trained, "raw": raw, "met": met})
    return rows


def render_table(results: dict[str, Any]) -> str:
    quality, protocol = results["quality"], results["protocol"]
    lines = ["| metric | target | untrained | trained | raw baseline | met? |", "| --- | --- | --- | --- | --- | --- |"]
    for row in accuracy_rows(protocol):
        target = f">= raw and >= untrained + {TARGETS['accuracy_margin']}"
        lines.append(
            f"| balanced accuracy, {row['method']}, 10 labels/class | {target} | {row['untrained']:.3f} | "
            f"{row['trained']:.3f} | {row['raw']:.3f} | {'yes' if row['met'] else 'no'} |"
        )
    for key, label in (
        ("neighbour_cosine", "neighbour cosine inside parcels"),
        ("lattice_ratio", "2 px lattice ratio (across / within 2x2 blocks)"),
        ("seam_ratio", "seam ratio (across / within 16 px cores)"),
        ("teacher_student", "teacher-student cosine, 50 % frames dropped"),
    ):
        untrained, trained = quality["untrained"][key], quality["trained"][key]
        met = "yes" if trained >= TARGETS[key] else "no"
        lines.append(f"| {label} | >= {TARGETS[key]} | {untrained:.3f} | {trained:.3f} | - | {met} |")
    training = results["training"]
    lines.append(f"| training windows per second (tiny, CPU) | - | - | {training['windows_per_second']:.2f} | - | - |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
