"""Running tasks on dask.distributed: a cluster to use, a model per worker, bounded submission.

with connect(scheduler=None, workers=2) as client:
    report = run(request, submit=dask_submitter(client, request))
"""

from __future__ import annotations

import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from distributed import Client, LocalCluster, WorkerPlugin, as_completed
from tqdm import tqdm

from aef_pipeline.errors import UserInputError
from aef_pipeline.run import RunRequest, TaskResult, TileTask, loaded_model, process_task

PLUGIN_NAME = "aef-model"


class ModelPlugin(WorkerPlugin):
    """Builds the model once when a worker starts, so no task waits for it or ships it."""

    name = PLUGIN_NAME

    def __init__(self, model: str) -> None:
        self.model = model

    def setup(self, worker: object) -> None:
        loaded_model(self.model)


@contextmanager
def connect(scheduler: str | None, workers: int, timeout_s: float = 10.0) -> Iterator[Client]:
    """A client of an existing scheduler, or of a LocalCluster of `workers` processes."""
    if scheduler:
        try:
            client = Client(scheduler, timeout=f"{timeout_s}s")
        except (OSError, TimeoutError) as error:
            raise UserInputError(
                f"dask scheduler {scheduler} did not answer within {timeout_s:g} s ({type(error).__name__}): "
                "check the address, or leave --scheduler out to start a local cluster"
            ) from None
        with client:
            yield client
        return
    gpus = torch.cuda.device_count()
    resources = {"GPU": 1} if gpus else None
    with (
        LocalCluster(
            n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=":0", resources=resources
        ) as cluster,  # fmt: skip
        Client(cluster) as client,
    ):
        yield client


def dask_submitter(
    client: Client, request: RunRequest, max_in_flight: int | None = None, progress: bool = True
) -> Callable[[list[TileTask]], Iterator[TaskResult]]:
    """Submit one future per task with an explicit key, at most `max_in_flight` at a time (default:
    two per worker), and yield results as they complete, with a progress bar in pixels."""
    client.register_plugin(ModelPlugin(request.model))
    workers = client.scheduler_info().get("workers", {})
    limit = max_in_flight or 2 * max(1, len(workers))
    gpu = any(w.get("resources", {}).get("GPU") for w in workers.values())

    def submit(tasks: list[TileTask]) -> Iterator[TaskResult]:
        pending = list(reversed(tasks))
        bar = tqdm(total=sum(t.pixels for t in tasks), unit="px", unit_scale=True, disable=not progress,
                   desc="embedding")  # fmt: skip
        if progress and client.dashboard_link:
            bar.write(f"dask dashboard: {client.dashboard_link}")
        running = as_completed()
        for _ in range(min(limit, len(pending))):
            running.add(_submit(client, pending.pop(), request, gpu))
        for future in running:
            result: TaskResult = future.result()
            bar.update(result.pixels)
            if pending:
                running.add(_submit(client, pending.pop(), request, gpu))
            yield result
        bar.close()

    return submit


def _submit(client: Client, task: TileTask, request: RunRequest, gpu: bool) -> object:
    resources = {"GPU": 1} if gpu else None
    return client.submit(safe_process_task, task, request, key=task.key, pure=False, resources=resources)


def safe_process_task(task: TileTask, request: RunRequest) -> TaskResult:
    """process_task, with a failure recorded for the report instead of ending the whole run."""
    try:
        return process_task(task, request)
    except Exception as error:
        last = traceback.extract_tb(error.__traceback__)[-1]
        return TaskResult(
            task.key, str(task.tile), task.period.label, "failed", pixels=task.pixels,
            error=f"{type(error).__name__}: {error} (at {last.filename}:{last.lineno})",
        )  # fmt: skip
