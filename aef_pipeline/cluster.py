"""Running tasks on dask.distributed: a cluster to use, a model per worker, bounded submission.

with connect(scheduler=None, workers=2) as client:
    report = run_on_cluster(client, request)  # or run(request, submit=dask_submitter(client))
"""

from __future__ import annotations

import os
import socket
from collections import Counter
from collections.abc import Callable, Generator, Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit

import dask
import torch
from distributed import Client, Future, LocalCluster, WorkerPlugin, as_completed, get_worker
from distributed.system import MEMORY_LIMIT
from tqdm import tqdm

from aef_pipeline.environment import available_cores, release_free_memory
from aef_pipeline.errors import UserInputError
from aef_pipeline.model import load_model
from aef_pipeline.plan import TileTask
from aef_pipeline.report import RunReport, TaskResult
from aef_pipeline.run import RunRequest, Submit, TaskContext, attempt_task, fixed_threads, run

PLUGIN_NAME = "aef-model"


class ModelPlugin(WorkerPlugin):
    """Builds the model once when a worker starts and holds it, with the catalogs the worker's
    tasks open, for all its tasks: no task waits for them or ships them (registering the plugin
    again, for another model, replaces it)."""

    name = PLUGIN_NAME

    def __init__(self, model: str) -> None:
        self.model_name = model
        self.context: TaskContext | None = None

    def setup(self, worker: Any) -> None:
        self.context = TaskContext(load_model(self.model_name))


Submitter = Callable[[Client], Submit]
"""Makes the submitter of a run on a cluster (default: dask_submitter); the CLI's seam for tests."""


def run_on_cluster(client: Client, request: RunRequest, submitter: Submitter | None = None) -> RunReport:
    """`run(request)` with its tasks on the client's workers; torch threads per task decided here
    from the workers' cores unless the request fixes them (`--threads`)."""
    request = fixed_threads(request, threads_per_worker(client))
    return run(request, submit=(submitter or dask_submitter)(client))


def on_local_cluster(workers: int, slots: int | None = None, submitter: Submitter | None = None) -> Submit:
    """A submitter that starts a LocalCluster (`connect(None, workers, slots=slots)`) only when it
    is handed tasks, and closes it when they are done: a run that its store refuses, or whose
    tile-periods are all complete, starts no worker (starting one costs seconds: each imports torch).
    Torch threads per task are decided from the workers' cores unless the request fixes them."""

    def submit(tasks: list[TileTask], request: RunRequest) -> Generator[TaskResult, None, None]:
        if not tasks:
            return
        with connect(None, workers, slots=slots) as client:
            request = fixed_threads(request, threads_per_worker(client))
            yield from (submitter or dask_submitter)(client)(tasks, request)

    return submit


def threads_per_worker(client: Client) -> int:
    """The smallest share of its host's cores any worker has: the torch thread count every task of
    a run gets, wherever it lands or is retried.

    dask starts worker processes with OMP_NUM_THREADS=1, which would leave torch one thread: a CPU
    worker would encode on one core however many it has (measured: 1 worker on 2 cores ran at
    0.18x the in-process rate). Each host's cores are split among the tasks that can run on it at
    once: its worker processes times their threads.
    """
    cores: dict[str, int] = client.run(available_cores)
    slots = {address: w.get("nthreads", 1) for address, w in client.scheduler_info().get("workers", {}).items()}
    per_host: Counter[str] = Counter()
    for address in cores:
        per_host[_host(address)] += slots.get(address, 1)
    return max(1, min((count // per_host[_host(address)] for address, count in cores.items()), default=1))


def _host(address: str) -> str:
    return urlsplit(address).hostname or ""


_TRIM_THRESHOLD = "MALLOC_TRIM_THRESHOLD_"


def worker_environ() -> dict[str, Any]:
    """dask's environment for new worker processes, less MALLOC_TRIM_THRESHOLD_ (which `connect`
    also keeps out of the environment they inherit), plus MALLOC_ARENA_MAX=2 unless this
    process's environment sets it.

    dask sets the trim threshold to hand freed memory back to the OS sooner; it also fixes glibc's
    mmap threshold, so every array over 128 KiB is mapped and unmapped again, page faults
    included: the encoder ran 2.5x slower in a worker than in a plain process (33.5 s vs 13.2 s
    for one task). glibc gives each thread that allocates (a task's read threads, torch's) an
    arena of its own, up to 8 per core, and memory freed in one is not reused by another: with
    two arenas a worker held 0.05-0.1 GB less between tasks and a 4-tile run peaked 2-5 % above
    a 1-tile run instead of 10-22 %, with the same encode times (docs/performance.md, figure 5).
    """
    environ = dict(dask.config.get("distributed.nanny.pre-spawn-environ", default={}))
    environ.pop(_TRIM_THRESHOLD, None)
    environ.setdefault("MALLOC_ARENA_MAX", os.environ.get("MALLOC_ARENA_MAX", 2))
    # A worker that dies in native code (GDAL, CUDA) then leaves its threads' Python stacks in the
    # log instead of only the nanny's "Restarting worker" (seen on a GPU node, 2026-12-04).
    environ.setdefault("PYTHONFAULTHANDLER", os.environ.get("PYTHONFAULTHANDLER", "1"))
    return environ


@contextmanager
def _environ_without(name: str) -> Iterator[None]:
    """`name` out of this process's environment while the block runs, put back after.

    dask's nanny writes its pre-spawn environment into the environment of the process that starts
    the workers and leaves it there (distributed/nanny.py, `os.environ.update(self.pre_spawn_env)`),
    so any LocalCluster started earlier in this process (a notebook's, another library's) leaves
    MALLOC_TRIM_THRESHOLD_ set here, and every worker spawned later, restarts included, inherits
    it: `worker_environ` removing it from dask's config is then not enough."""
    value = os.environ.pop(name, None)
    try:
        yield
    finally:
        if value is not None:
            os.environ[name] = value


def worker_memory_limit(workers: int) -> int:
    """Bytes each of a local cluster's `workers` may hold: the machine's (or cgroup's) memory over
    the workers. dask's "auto" gives a worker the share of its threads among the cores, but our
    tasks are few per worker and each uses many cores (read and torch threads): on a 16-core GPU
    node a worker of two task slots would get 2/16 of the memory and be restarted by its nanny."""
    return MEMORY_LIMIT // max(1, workers)


@contextmanager
def connect(scheduler: str | None, workers: int, timeout_s: float = 10.0, slots: int | None = None) -> Iterator[Client]:
    """A client of an existing scheduler, or of a LocalCluster of `workers` processes running
    `slots` tasks each (default: two on a machine with a GPU, else one).

    With two slots a worker searches, reads and writes one task while the other's forward passes
    run (they take turns on the encoder: TaskContext.encoder_turn), so a GPU never waits for the
    next tile's reads (docs/performance.md, figure 8). A GPU worker declares `slots` units of the
    GPU resource, each task takes one. On a CPU the encoder already has every core, and a second
    slot only halves each task's torch threads (cluster.threads_per_worker).
    """
    if scheduler:
        try:
            _check_listening(scheduler)
            client = Client(scheduler, timeout=f"{timeout_s}s")
        except (OSError, TimeoutError) as error:
            how = "refused the connection" if isinstance(error, ConnectionRefusedError) else f"within {timeout_s:g} s"
            raise UserInputError(
                f"dask scheduler {scheduler} did not answer ({how}, {type(error).__name__}): "
                "check the address, or leave --scheduler out to start a local cluster"
            ) from None
        with client:
            yield client
        return
    gpus = torch.cuda.device_count()
    slots = slots or (2 if gpus else 1)
    resources = {"GPU": slots} if gpus else None
    with (
        dask.config.set({"distributed.nanny.pre-spawn-environ": worker_environ()}),
        _environ_without(_TRIM_THRESHOLD),
        LocalCluster(
            n_workers=workers,
            threads_per_worker=slots,
            processes=True,
            dashboard_address=":0",
            resources=resources,
            memory_limit=worker_memory_limit(workers),
        ) as cluster,
        Client(cluster) as client,
    ):
        yield client


def _check_listening(address: str) -> None:
    """Raise ConnectionRefusedError at once when nothing listens at a tcp:// or tls:// address
    (dask's client would retry until its timeout); other protocols are left to dask."""
    parts = urlsplit(address if "://" in address else f"tcp://{address}")
    if parts.scheme in ("tcp", "tls") and parts.hostname and parts.port:
        with socket.create_connection((parts.hostname, parts.port), timeout=5):
            pass


def dask_submitter(
    client: Client,
    max_in_flight: int | None = None,
    progress: bool = True,
    plugin: Callable[[str], ModelPlugin] = ModelPlugin,
) -> Submit:
    """Submit one future per task with an explicit key, at most `max_in_flight` at a time (default:
    two per worker), and yield results as they complete, with a progress bar in pixels. Closing
    the generator early (the run stopped) cancels the tasks still queued or running. The workers
    build the request's model once each (`plugin`, ModelPlugin or a subclass: the benchmarks'
    seam) before its first task."""
    workers = client.scheduler_info().get("workers", {})
    limit = max_in_flight or 2 * max(1, len(workers))
    gpu = any(w.get("resources", {}).get("GPU") for w in workers.values())

    def submit(tasks: list[TileTask], request: RunRequest) -> Generator[TaskResult, None, None]:
        if request.environment.torch_threads is None:  # run() handed this submitter directly
            request = fixed_threads(request, threads_per_worker(client))
        client.register_plugin(plugin(request.model))
        pending = list(reversed(tasks))
        bar = tqdm(
            total=sum(t.pixels for t in tasks), unit="px", unit_scale=True, disable=not progress, desc="embedding"
        )
        if progress and client.dashboard_link:
            bar.write(f"dask dashboard: {client.dashboard_link}")
        in_flight = {_submit(client, pending.pop(), request, gpu) for _ in range(min(limit, len(pending)))}
        running = as_completed(in_flight)
        try:
            for future in running:
                in_flight.discard(future)
                result: TaskResult = future.result()
                bar.update(result.pixels)
                if pending:
                    following = _submit(client, pending.pop(), request, gpu)
                    in_flight.add(following)
                    running.add(following)
                yield result
        finally:
            client.cancel(list(in_flight))
            bar.close()

    return submit


def _submit(client: Client, task: TileTask, request: RunRequest, gpu: bool) -> Future[TaskResult]:
    resources = {"GPU": 1} if gpu else None
    return client.submit(safe_process_task, task, request, key=task.key, pure=False, resources=resources)


def safe_process_task(task: TileTask, request: RunRequest) -> TaskResult:
    """The task on a worker, with the worker's model; failures recorded, not raised."""
    plugin = get_worker().plugins[PLUGIN_NAME]
    assert isinstance(plugin, ModelPlugin), "dask_submitter registers ModelPlugin on every worker"
    assert plugin.context is not None, "ModelPlugin.setup builds the model"
    try:
        return attempt_task(task, request, plugin.context)
    finally:
        release_free_memory()
