"""Watch a dask scheduler from a host of its network (a test's eyes inside a private network).

    python -m aef_pipeline.testing.dask_probe tcp://10.47.0.1:8786 --workers 2

prints `ready` once that many workers are connected, then the address of the first worker that
is given a task, and exits (status 1, with the reason on stderr, if either takes longer than
`--timeout` seconds). A test that cannot reach the scheduler's network itself runs this on one
of its hosts and reads the lines.
"""

from __future__ import annotations

import argparse
import sys
import time

from distributed import Client


def first_busy_worker(client: Client, timeout_s: float, poll_s: float = 0.02) -> str:
    """The address of the first worker the scheduler has given a task to run."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        busy = sorted(address for address, keys in client.processing().items() if keys)  # type: ignore[no-untyped-call]
        if busy:
            return str(busy[0])
        time.sleep(poll_s)
    raise TimeoutError(f"no worker was given a task within {timeout_s:g} s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m aef_pipeline.testing.dask_probe", description=__doc__)
    parser.add_argument("scheduler", help="the scheduler's address, e.g. tcp://10.47.0.1:8786")
    parser.add_argument("--workers", type=int, default=1, help="workers to wait for before watching")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for each event")
    args = parser.parse_args(argv)
    try:
        with Client(args.scheduler, timeout=f"{args.timeout}s") as client:  # type: ignore[no-untyped-call]
            client.wait_for_workers(args.workers, timeout=args.timeout)
            print("ready", flush=True)
            print(first_busy_worker(client, args.timeout), flush=True)
    except (OSError, TimeoutError) as error:
        print(f"dask_probe: {type(error).__name__}: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
