"""The test suite. Its processes share two cores (pytest-xdist runs two, each starting clusters
and subprocesses), so OpenMP's threads must sleep while they wait instead of spinning.

libgomp's threads spin for a while after each parallel region before they sleep. With two
processes each training with two torch threads on two cores, every spinning thread holds a core
the other process needs: 40 training steps in each took 200 s instead of 22 s (26 s with passive
waiting, 19 s for one process alone). The variable must be set before torch loads its OpenMP
runtime, which is why it is here: pytest imports this package before tests/conftest.py, and the
processes the tests start (xdist workers, dask workers, CLI runs, torchrun) inherit it.
"""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
