"""A lost host: the scheduler and two workers on hosts of their own (network namespaces on a private
switch, made by the test), one worker host cut off from the network mid-task; the run completes
and the store equals a clean run's (docs/cluster.md, docs/reliability.md).

Needs root and iproute2 (`ip netns`); skipped, with the reason, where namespaces cannot be made.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from aef_pipeline.search import CatalogConfig
from aef_pipeline.testing.netns import PrivateNetwork, private_network, why_no_network
from aef_pipeline.testing.stores import assert_same_stores
from aef_pipeline.verify import verify_store
from tests.sites import SMALL

WORKERS = ("worker-1", "worker-2")
PORT = 8786  # the namespaces are this test's own: nothing else can hold the port
PYTHON = sys.executable

# dask notices a lost host when TCP gives up on the worker's connection: keepalive probes and
# unacknowledged data time out after distributed.comm.timeouts.tcp (30 s by default; 11 s is the
# least dask accepts). The worker TTL (5 minutes) is left alone: on a loaded machine a healthy
# worker's event loop stalls for seconds, and a short TTL would remove it too. A saturation of 1
# gives a one-thread worker one task at a time (1.1 gives it two), so each worker starts with one
# of the run's two tasks even when one registers just before the run submits them.
DASK_CONFIG = """\
distributed:
  comm:
    timeouts:
      tcp: 11s
  scheduler:
    worker-saturation: 1.0
  nanny:
    pre-spawn-environ:
      MALLOC_TRIM_THRESHOLD_: null  # as cluster.worker_environ does for local clusters
"""


@pytest.fixture
def network() -> Iterator[PrivateNetwork]:
    reason = why_no_network()
    if reason:
        pytest.skip(f"lost-host test needs network namespaces: {reason}")
    with private_network(("scheduler", *WORKERS)) as net:
        yield net


class Hosts:
    """Processes started on the network's hosts, each logging to `logs/<name>.log`, with dask
    configured by DASK_CONFIG."""

    def __init__(self, net: PrivateNetwork, workdir: Path) -> None:
        self.net, self.logs = net, workdir / "logs"
        self.logs.mkdir()
        (workdir / "dask.yaml").write_text(DASK_CONFIG)
        self.env = {**os.environ, "DASK_CONFIG": str(workdir / "dask.yaml"), "PYTHONUNBUFFERED": "1"}

    def start(self, host: str, name: str, argv: Sequence[str], piped: bool = False) -> subprocess.Popen[str]:
        """Start `argv` on `host`; its output goes to the log `name`, or to a pipe if `piped`."""
        with (self.logs / f"{name}.log").open("w") as log:
            stdout = subprocess.PIPE if piped else log
            return self.net.popen(
                host, argv, env=self.env, stdin=subprocess.DEVNULL, stdout=stdout, stderr=log, text=True
            )

    def log(self, name: str) -> str:
        return (self.logs / f"{name}.log").read_text()

    def printed(self) -> str:
        """The end of every log, for a failure's message."""
        return "\n".join(f"--- {p.stem}:\n{p.read_text()[-3000:]}" for p in sorted(self.logs.glob("*.log")))


def _dask(command: str, *args: str) -> list[str]:
    return [PYTHON, "-m", f"distributed.cli.dask_{command}", *args, "--no-dashboard"]


def _worker(net: PrivateNetwork, host: str, scheduler: str, directory: Path) -> list[str]:
    """One worker process of one thread (behind its nanny, as `dask worker` starts it)."""
    argv = _dask("worker", scheduler, "--host", net.address(host), "--name", host)
    return [*argv, "--nthreads", "1", "--local-directory", str(directory)]


def _run_argv(scheduler: str, catalog: CatalogConfig, out: Path) -> list[str]:
    area = [str(v) for v in (SMALL.west, SMALL.south, SMALL.east, SMALL.north)]
    argv = ["run", "--scheduler", scheduler, "--stac", catalog.url, "--bbox", *area, "--years", "2021-2022"]
    return [PYTHON, "-m", "aef_pipeline.cli", *argv, "--out", str(out), "--device", "cpu", "--threads", "1"]


def test_a_worker_host_lost_mid_run_changes_nothing(
    network: PrivateNetwork, static_catalog: CatalogConfig, clean_two_years: Path, tmp_path: Path
) -> None:
    net, hosts = network, Hosts(network, tmp_path)
    scheduler = f"tcp://{net.address('scheduler')}:{PORT}"
    hosts.start("scheduler", "scheduler", _dask("scheduler", "--host", net.address("scheduler"), "--port", str(PORT)))
    for host in WORKERS:
        hosts.start(host, host, _worker(net, host, scheduler, tmp_path / host))
    probe = hosts.start(
        "scheduler", "probe", [PYTHON, "-m", "aef_pipeline.testing.dask_probe", scheduler, "--workers", "2"], piped=True
    )
    out = tmp_path / "field.zarr"
    client = hosts.start("scheduler", "run", _run_argv(scheduler, static_catalog, out))
    assert probe.stdout is not None
    assert probe.stdout.readline() == "ready\n", hosts.printed()
    busy = probe.stdout.readline().strip()
    assert busy.startswith("tcp://"), hosts.printed()
    lost = net.host_of(busy)
    net.unplug(lost)  # mid-task: its worker computes on, but no packet gets in or out

    try:
        assert client.wait(timeout=120) == 0, hosts.printed()
    except subprocess.TimeoutExpired:
        pytest.fail(f"the run did not finish within 120 s of losing {lost}:\n{hosts.printed()}")
    assert f"Remove worker addr: {busy} name: {lost}" in hosts.log("scheduler")  # and its task given to the other
    # The lost task was redone by the other worker, or found complete there (the cut-off worker
    # finished it and wrote it to the shared store before the scheduler gave up on it).
    summary = re.search(
        r"(\d+) tile-periods done, 0 without scenes, (\d+) already complete, 0 failed", hosts.log("run")
    )
    assert summary, hosts.printed()
    assert int(summary[1]) + int(summary[2]) == 2
    net.power_off(lost)  # whatever it was still writing has landed, or never will
    assert_same_stores(clean_two_years, out)
    assert verify_store(out).ok
