"""The process settings a task runs under, decided once at the entry point and carried on the request.

    environment = TaskEnvironment(torch_threads=2)
    with applied(environment):
        ...  # one task: search, load, encode, write

Nothing here is set when the package is imported: each task applies its environment for its own
duration and undoes it afterwards, so the first run on a worker, a retry on another worker and a
resumed run all compute with the same settings (the same torch thread count, hence the same
kernels), whatever the worker process happened to hold before.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import logging
import os
import warnings
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any

import dask
import torch

from aef_pipeline.load import REDACTED_LOGGERS, GdalOptions, RedactTokens

# pystac migrates the storage extension (v1 -> v2) of every item it reads, and warns for each item
# whose hrefs it cannot split into bucket and account: every Earth Search item (https hrefs) and
# every local file. We never read storage fields, so the warning says nothing to our users; it is
# silenced by its exact message while a task (or a plan's search) runs.
PYSTAC_STORAGE_WARNING = "Could not parse bucket/account from href"


@dataclass(frozen=True)
class TaskEnvironment:
    """How a task's process computes and reads; none of it changes a result."""

    torch_threads: int | None = None
    """Intra-op threads of the encoder. None: decided when the run starts (the cores of this
    machine in-process; on a cluster, the smallest worker's share of its host's cores) and then
    fixed for every task of the run."""
    read_threads: int = 4
    """Threads reading a task's lazy cube (GDAL range requests and decoding)."""
    read_ahead: int = 1
    """Row blocks of the cube read on a background thread while the encoder works on the current
    one (encode.EncodeOptions.read_ahead); 0 reads a block only when the encoder needs it."""
    gdal: GdalOptions = field(default_factory=GdalOptions)
    """GDAL settings for reading COGs; odc-stac ships them with each read."""
    reader: Any = None
    """An odc-stac reader driver (None: its rasterio reader); tests inject a failing or slow one
    (aef_pipeline.testing.readers). Must pickle, to reach dask workers."""


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity, which containers and batch systems
    restrict, not the machine's count)."""
    return len(os.sched_getaffinity(0))


@contextmanager
def applied(environment: TaskEnvironment) -> Iterator[None]:
    """Run the block with the environment's torch threads and read threads, the token-redacting
    log filters and pystac's storage warning silenced; everything is undone at the end."""
    with ExitStack() as stack:
        if environment.torch_threads is not None:
            stack.enter_context(torch_threads(environment.torch_threads))
        stack.enter_context(dask.config.set(scheduler="threads", num_workers=environment.read_threads))
        stack.enter_context(redacted_logs())
        stack.enter_context(warnings.catch_warnings())
        warnings.filterwarnings("ignore", message=PYSTAC_STORAGE_WARNING, category=UserWarning)
        yield


@contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """torch's intra-op thread count for the block, restored after (OpenMP counts are per thread:
    apply it in the thread that encodes)."""
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextmanager
def redacted_logs() -> Iterator[None]:
    """Signed-URL tokens removed from the log records of odc-stac and rasterio for the block.
    Each call adds and removes its own filter, so blocks may overlap in threads."""
    redact = RedactTokens()
    loggers = [logging.getLogger(name) for name in REDACTED_LOGGERS]
    for logger in loggers:
        logger.addFilter(redact)
    try:
        yield
    finally:
        for logger in loggers:
            logger.removeFilter(redact)


def release_free_memory() -> None:
    """Hand freed heap back to the OS (glibc only): after a task, so that a worker's resident
    memory does not creep up from task to task, and between a task's encoding and its write, so
    that the write's whole-tile buffers do not come on top of what encoding left resident (its
    peak, docs/performance.md figure 5). Used instead of dask's MALLOC_TRIM_THRESHOLD_, which
    trims on every free and slowed the encoder 2.5x (cluster.worker_environ)."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to do
        ctypes.CDLL("libc.so.6").malloc_trim(0)
