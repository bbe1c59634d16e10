"""Figures 5 and 6: peak memory per worker for a 1-tile and a 4-tile run, and throughput with 1
and 2 worker processes, each run on a fresh LocalCluster (so peaks belong to that run alone).

Peak RSS is each worker process's ru_maxrss after the run; throughput is the pixels written over
the run's wall time (planning, template, tasks, consolidation, STAC; not the cluster's start).
"""

from __future__ import annotations

import dataclasses
import time
import warnings
from pathlib import Path
from typing import Any

from aef_pipeline.cluster import connect, dask_submitter, run_on_cluster
from aef_pipeline.grid import BBox
from aef_pipeline.report import RunReport
from aef_pipeline.run import RunRequest
from benchmarks import memory_probes
from benchmarks.report import Figure


def cluster_run(request: RunRequest, bbox: BBox, workers: int, stages: bool = False) -> dict[str, Any]:
    """The run on a fresh cluster of `workers` processes; with `stages`, also each task's peak RSS
    per stage in its worker (`stage_peaks`)."""
    request = dataclasses.replace(request, bbox=bbox, overwrite=True)
    with connect(None, workers) as client:
        client.run(warnings.simplefilter, "ignore")  # third-party deprecations in the workers' logs
        if stages:
            client.run(memory_probes.watch_stages)
        start = time.perf_counter()
        report: RunReport = run_on_cluster(client, request, lambda c: dask_submitter(c, progress=False))
        seconds = time.perf_counter() - start
        peaks: dict[str, int] = client.run(memory_probes.peak_rss_bytes)
        stage_peaks: dict[str, list[str]] = client.run(memory_probes.stage_log) if stages else {}
    done = [task for task in report.tasks if task.status == "done"]
    if len(done) != len(report.tasks):
        raise RuntimeError(f"benchmark run did not complete: {report.summary()}")
    pixels = sum(task.pixels for task in done)
    return {
        "workers": workers,
        "tasks": len(done),
        "pixels": pixels,
        "seconds": seconds,
        "px_per_s": pixels / seconds,
        "peak_rss_gb": sorted(p / 1e9 for p in peaks.values()),
        "stage_peaks": [line for lines in stage_peaks.values() for line in lines],
        "task_seconds": [dict(task.seconds) for task in done],
    }


def memory_figure(one: dict[str, Any], four: dict[str, Any]) -> Figure:
    ratio = max(four["peak_rss_gb"]) / max(one["peak_rss_gb"])
    return Figure(
        5,
        "memory: peak RSS per worker, 4-tile / 1-tile run",
        ratio,
        "",
        "<= 1.1",
        sizes=f"{one['tasks']} vs {four['tasks']} tasks of {one['pixels'] // one['tasks']:,} px, 1 worker",
        note=f"1 tile {max(one['peak_rss_gb']):.2f} GB, 4 tiles {max(four['peak_rss_gb']):.2f} GB",
        details={"one_tile": one, "four_tiles": four},
    )


def scaling_figure(one_worker: dict[str, Any], two_workers: dict[str, Any], cores: int) -> Figure:
    return Figure(
        6,
        "scaling: throughput 2 workers / 1 worker",
        two_workers["px_per_s"] / one_worker["px_per_s"],
        "",
        sizes=f"{one_worker['tasks']} tasks, {one_worker['pixels']:,} px, {cores} cores",
        note=f"1 worker {one_worker['px_per_s']:,.0f} px/s, 2 workers {two_workers['px_per_s']:,.0f} px/s",
        details={"one_worker": one_worker, "two_workers": two_workers},
    )


def main() -> None:
    """Figure 5 alone, repeated: `python -m benchmarks.scaling [--repeats 5] [--quadrants]`.

    Alternates a 1-tile and a 4-tile run on fresh 1-worker clusters and prints each run's peak and
    their ratio. `--quadrants` also runs each of the 4-tile run's tasks alone, so the 4-tile peak
    can be told apart from the largest of its tasks (the tasks differ in frames and data)."""
    import argparse
    import tempfile

    from aef_pipeline.plan import Period
    from aef_pipeline.search import CatalogConfig
    from aef_pipeline.testing import serve_catalogs
    from benchmarks.__main__ import SMALL_M
    from benchmarks.data import CORNER, YEAR, bench_catalog, quadrant_bbox, utm_bbox

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quadrants", action="store_true", help="also each task of the 4-tile run alone")
    parser.add_argument("--stages", action="store_true", help="also each task's peak RSS per stage")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    catalog, _ = bench_catalog()
    x, y, margin = *CORNER, 50.0
    quadrants = {
        f"{ns}{ew}": utm_bbox(
            *sorted((x + sx * margin, x + sx * (SMALL_M - margin))),
            *sorted((y + sy * margin, y + sy * (SMALL_M - margin))),
        )
        for ns, sy in (("n", 1), ("s", -1))
        for ew, sx in (("e", 1), ("w", -1))
    }
    with tempfile.TemporaryDirectory(prefix="aef-bench-") as tmp, serve_catalogs([catalog], Path(tmp) / "api") as url:
        request = RunRequest(
            quadrant_bbox(SMALL_M, 1), (Period.year(YEAR),), Path(tmp) / "field.zarr", CatalogConfig(url), model="tiny"
        )
        for repeat in range(args.repeats):
            one = cluster_run(request, quadrant_bbox(SMALL_M, 1), workers=1, stages=args.stages)
            four = cluster_run(request, quadrant_bbox(SMALL_M, 4), workers=1, stages=args.stages)
            figure = memory_figure(one, four)
            print(f"repeat {repeat}: [5] {figure.value:.3f} ({figure.note})", flush=True)
            if args.stages:
                for name, result in (("1 tile", one), ("4 tiles", four)):
                    print(f"  {name}, tasks' seconds {result['task_seconds']}", flush=True)
                    print("\n".join(f"    {line}" for line in result["stage_peaks"]), flush=True)
            if args.quadrants:
                alone = {
                    name: max(cluster_run(request, bbox, workers=1)["peak_rss_gb"]) for name, bbox in quadrants.items()
                }
                print(
                    "  each task alone: " + ", ".join(f"{name} {gb:.3f} GB" for name, gb in alone.items()), flush=True
                )


if __name__ == "__main__":
    main()
