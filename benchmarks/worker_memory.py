"""Peak memory probes run inside dask workers (`client.run`) by figure 5 (benchmarks/scaling.py).

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


def peak_rss_bytes() -> int:
    """The process's own high-water mark (VmHWM, or the largest stage peak where stages reset it).
    Not ru_maxrss: Linux keeps that across fork and exec, so a worker would report its parent's
    peak."""
    if (hwm_kb := status_kb("VmHWM")) or _PEAK_KB[0]:
        return max(hwm_kb, _PEAK_KB[0]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # not Linux: best available


def status_kb(field: str) -> int:
    """A /proc/self/status field in kB; 0 where there is none (not Linux)."""
    status = Path("/proc/self/status")
    for line in status.read_text().splitlines() if status.exists() else []:
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    return 0


def watch_stages() -> None:
    """Wrap the stages of `run.process_task` so each records the RSS before it, its peak (VmHWM,
    reset through /proc/self/clear_refs as it starts) and the RSS after it."""
    import aef_pipeline.run as run_module

    def watched(name: str, stage: Any) -> Any:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            _PEAK_KB[0] = max(_PEAK_KB[0], status_kb("VmHWM"))  # what came before this stage
            before = status_kb("VmRSS")
            Path("/proc/self/clear_refs").write_text("5")
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
