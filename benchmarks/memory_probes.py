"""Resident-memory probes from /proc/self/status, for the benchmarks that measure peaks: in this
process (benchmarks/maps.py) and inside dask workers through `client.run` (figure 5,
benchmarks/scaling.py).

A module of their own, imported by name: functions of a script run as `python -m` are pickled by
value, globals included, so a worker would keep its stage log in a copy that the next call never
sees.
"""

from __future__ import annotations

import resource
from pathlib import Path
from typing import Any

# In a worker: one line per watched stage, and the largest stage peak (clearing VmHWM for each
# stage would otherwise hide the earlier stages' peaks from peak_rss_bytes).
_STAGES: list[str] = []
_PEAK_KB = [0]


def status_kb(key: str) -> int:
    """A figure of /proc/self/status, in kB (VmRSS: resident now; VmHWM: its high-water mark)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {key}: this benchmark needs Linux")


def reset_peak() -> None:
    """Reset VmHWM to the current RSS, so the peak read after a call is the call's own."""
    Path("/proc/self/clear_refs").write_text("5")


def peak_rss_bytes() -> int:
    """The process's own high-water mark (VmHWM, or the largest stage peak where stages reset it).
    Not ru_maxrss: Linux keeps that across fork and exec, so a worker would report its parent's
    peak."""
    try:
        return max(status_kb("VmHWM"), _PEAK_KB[0]) * 1024
    except (OSError, RuntimeError):  # not Linux: best available
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def watch_stages() -> None:
    """Wrap the stages of `run.process_task` so each records the RSS before it, its peak (VmHWM,
    reset as it starts) and the RSS after it."""
    import aef_pipeline.run as run_module

    def watched(name: str, stage: Any) -> Any:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            _PEAK_KB[0] = max(_PEAK_KB[0], status_kb("VmHWM"))  # what came before this stage
            before = status_kb("VmRSS")
            reset_peak()
            try:
                return stage(*args, **kwargs)
            finally:
                peak, after = status_kb("VmHWM"), status_kb("VmRSS")
                _PEAK_KB[0] = max(_PEAK_KB[0], peak)
                _STAGES.append(f"{name:12s} RSS {before / 1e6:.3f} -> peak {peak / 1e6:.3f} -> {after / 1e6:.3f} GB")

        return wrapper

    for name in ("search", "load_and_encode", "release_free_memory", "write"):
        setattr(run_module, name, watched(name, getattr(run_module, name)))


def stage_log() -> list[str]:
    return list(_STAGES)
