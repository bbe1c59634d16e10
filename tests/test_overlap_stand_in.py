"""The CPU stand-in of figure 8 (benchmarks/overlap.py): the encoder's turn runs its holder on the
device core and nothing else there."""

from __future__ import annotations

import os
import threading

import pytest

from benchmarks.overlap import StandInCores, TimedTurn, pinned_process

pytestmark = pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="the stand-in needs two CPU cores")


def test_the_turn_holder_runs_on_the_device_core_and_other_threads_on_the_host_cores() -> None:
    cores = StandInCores.split()
    turn = TimedTurn(cores)
    seen: dict[str, set[int]] = {}

    def task() -> None:
        seen["before"] = os.sched_getaffinity(0)
        with turn:
            seen["holding"] = os.sched_getaffinity(0)
        seen["after"] = os.sched_getaffinity(0)

    before = os.sched_getaffinity(0)
    with pinned_process(cores.host):
        thread = threading.Thread(target=task)
        thread.start()
        thread.join()
        seen["main"] = os.sched_getaffinity(0)
    assert seen["before"] == seen["after"] == seen["main"] == set(cores.host)
    assert seen["holding"] == set(cores.device)
    assert os.sched_getaffinity(0) == before  # restored
    assert turn.busy_s > 0
