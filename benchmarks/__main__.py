"""The benchmark suite: every figure of docs/performance.md, measured in one run, with its target.

    python -m benchmarks [--device cpu|cuda|auto] [--specs tiny,paper] [--json benchmarks.json]

Figure 8 (overlap of loading and encoding across tasks) runs benchmarks/overlap.py's measurement.

Data: the cached benchmark test bed (benchmarks/data.py: 2,052 x 2,052 px, 42 products of 2022;
built on first use in about 1.5 minutes on 2 cores). Model `tiny` runs the pipeline figures;
each spec gets its own encoder figure. Prints a table and writes the same figures as JSON.
"""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import sys
import tempfile
import time
import warnings
from pathlib import Path

from aef_pipeline.encode import required_halo, resolve_device
from aef_pipeline.model import load_spec
from aef_pipeline.plan import Period, TileTask, plan_tasks
from aef_pipeline.run import RunRequest
from aef_pipeline.search import CatalogConfig, open_source, search_tile
from aef_pipeline.testing import serve_catalogs
from benchmarks.cost import cost_figure
from benchmarks.data import YEAR, bench_catalog, quadrant_bbox
from benchmarks.encoding import encoder_rate
from benchmarks.loading import loader_efficiency, read_amplification
from benchmarks.overlap import LIGHT_SPEC, TASK_HALF_M, overlap_figure
from benchmarks.pipeline import pipeline_efficiency, task_cube
from benchmarks.report import Figure, machine, print_table, save_json
from benchmarks.scaling import cluster_run, memory_figure, scaling_figure

QUADRANT_M = 10_000  # the task of figures 2-4: a 1,008 px square of one tile (data covers 1,026)
SMALL_M = 4_800  # the tasks of figures 5-6: 480 px squares, in 1 or 4 tiles


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto (encoder figures)")
    parser.add_argument("--json", type=Path, default=Path("benchmarks.json"))
    parser.add_argument("--specs", default="tiny,paper", help="comma-separated model specs for figure 1")
    args = parser.parse_args()
    warnings.simplefilter("ignore")  # third-party deprecations would drown the table
    device = str(resolve_device(args.device))
    info, started = machine(), time.perf_counter()
    catalog, built = bench_catalog()
    print(
        f"test bed: {len(catalog.items)} products, {'built' if built else 'cached'} in "
        f"{time.perf_counter() - started:.0f} s ({catalog.root})"
    )
    figures: list[Figure] = []
    period = Period.year(YEAR)
    with tempfile.TemporaryDirectory(prefix="aef-bench-") as tmp, serve_catalogs([catalog], Path(tmp) / "api") as url:
        workdir = Path(tmp)
        request = RunRequest(
            quadrant_bbox(QUADRANT_M, 1),
            (period,),
            workdir / "field.zarr",
            CatalogConfig(url),
            model="tiny",
            device=device,
        )
        (task,) = plan_tasks(request.bbox, request.periods, load_spec("tiny").core)
        figures += _data_path_figures(task, request, workdir)
        for name in args.specs.split(","):
            encoder = _encoder_figure(task, request, name, device)
            figures += [encoder, cost_figure(encoder)]
        figures += _cluster_figures(request)
        figures.append(_overlap_figure(request))
    info["suite_seconds"] = round(time.perf_counter() - started, 1)
    print_table(sorted(figures, key=lambda f: f.number), info)
    save_json(figures, info, shlex.join(["python", "-m", "benchmarks", *sys.argv[1:]]), args.json)
    print(f"\n{len(figures)} figures in {info['suite_seconds']:.0f} s; JSON: {args.json}")


def _data_path_figures(task: TileTask, request: RunRequest, workdir: Path) -> list[Figure]:
    spec = load_spec(request.model)
    halo = required_halo(spec, request.overlap)
    area = task.geobox()
    selection = search_tile(open_source(request.catalog), area.pad(halo), task.period, spec.bands)
    loader = loader_efficiency(selection, area.pad(halo), spec.bands)
    print(f"[2] loader efficiency {loader.value:.2f}")
    pipeline = pipeline_efficiency(task, request, workdir)
    print(f"[4] pipeline efficiency {pipeline.value:.2f} ({pipeline.note})")
    amplification = read_amplification(task, dataclasses.replace(request, output=workdir / "amp.zarr"), selection, halo)
    print(f"[3] read amplification {amplification.value:.3f}")
    return [loader, amplification, pipeline]


def _encoder_figure(task: TileTask, request: RunRequest, name: str, device: str) -> Figure:
    spec = load_spec(name)
    halo = required_halo(spec, False)
    # Areas that take about a minute or less: 8 x 8 cores on a GPU; on a CPU ~384 px for small
    # specs, one window for large ones (paper: ~1 minute per 96 px core with 40 frames).
    cores = 8 if device.startswith("cuda") else (1 if spec.core >= 64 else max(1, 384 // spec.core))
    r0, c0 = (-(-edge // spec.core) * spec.core for edge in (task.window[0], task.window[2]))
    area = task.tile.geobox[r0 : r0 + cores * spec.core, c0 : c0 + cores * spec.core]
    selection = search_tile(open_source(request.catalog), area.pad(halo), task.period, spec.bands)
    cube = task_cube(selection, area, halo, spec.bands)
    # Every forward pass has the batch's shape (dummy windows fill it: encode.py), so one window
    # on a CPU runs as a batch of one rather than one window and seven dummies.
    batches = (2, 4, 8, 16, 32) if device.startswith("cuda") else ((8,) if cores > 1 else (1,))
    figure = encoder_rate(cube, area, name, device, batches, task.period)
    print(f"[1] encoder {name}: {figure.value:,.0f} px/s ({figure.note})")
    return figure


def _cluster_figures(request: RunRequest) -> list[Figure]:
    one = cluster_run(request, quadrant_bbox(SMALL_M, 1), workers=1)
    four = cluster_run(request, quadrant_bbox(SMALL_M, 4), workers=1)
    four_two = cluster_run(request, quadrant_bbox(SMALL_M, 4), workers=2)
    print(f"[5,6] runs: {one}\n  {four}\n  {four_two}")
    return [memory_figure(one, four), scaling_figure(four, four_two, machine()["cores"])]


def _overlap_figure(request: RunRequest) -> Figure:
    # On a GPU the real encoder is as fast as its node's loaders; on a CPU `tiny` is 13x slower
    # than loading, so the CPU figure uses the light spec, with one core standing in for the
    # device (benchmarks/overlap.py says why).
    gpu = request.device.startswith("cuda")
    overlap = dataclasses.replace(
        request, bbox=quadrant_bbox(TASK_HALF_M, 4), model="paper" if gpu else str(LIGHT_SPEC), overwrite=True
    )
    figure = overlap_figure(overlap, read_threads=4 if gpu else 1, stand_in=not gpu)
    print(f"[8] overlap {figure.value:.2f} ({figure.note})")
    return figure


if __name__ == "__main__":
    main()
