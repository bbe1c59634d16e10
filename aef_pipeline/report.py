"""What a run did: one `TaskResult` per (tile window, period), gathered in a `RunReport` that is
summarised for the terminal and saved as JSON beside the store (`<store>.runs/run-<time>.json`)."""

from __future__ import annotations

import enum
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from aef_pipeline.plan import TileTask

STAGES = ("search", "load", "encode", "write")


class TaskStatus(enum.StrEnum):
    """How a task ended."""

    DONE = "done"
    """Written and recorded."""
    EMPTY = "empty"
    """No usable scene: nothing written, nothing recorded."""
    SKIPPED = "skipped"
    """Already complete in the store (a rerun)."""
    FAILED = "failed"
    """An error: nothing recorded; rerunning redoes it."""


@dataclass
class TaskResult:
    """What one task did, for the run report."""

    key: str
    tile: str
    period: str
    status: TaskStatus = TaskStatus.DONE
    pixels: int = 0
    scenes: list[str] = field(default_factory=list)
    dropped: list[dict[str, Any]] = field(default_factory=list)
    read_failures: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    error: str = ""
    traceback: str = ""
    """The full traceback of a failure that is a bug (not the package's own errors or an OSError)."""
    out_of_space: bool = False
    """The failure was a full disk or quota: every later write would fail too, so the run stops."""
    torch_threads: int | None = None
    """The torch threads the task computed with (they decide which kernels, and so the last bits
    of the values): the request's `--threads`, or its worker's share of its host's cores."""

    @classmethod
    def of(cls, task: TileTask, status: TaskStatus = TaskStatus.DONE, **details: Any) -> TaskResult:
        return cls(task.key, str(task.tile), task.period.label, status, pixels=task.pixels, **details)

    @contextmanager
    def timed(self, stage: str) -> Iterator[None]:
        """Record the block's wall time as this task's time for `stage`."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[stage] = round(time.perf_counter() - start, 3)


@dataclass
class RunReport:
    """The whole run: per-task results and totals; saved as JSON beside the store."""

    started: str
    request: dict[str, Any]
    tasks: list[TaskResult] = field(default_factory=list)
    seconds: float = 0.0

    def count(self, status: TaskStatus) -> int:
        return sum(1 for task in self.tasks if task.status == status)

    @property
    def failed(self) -> list[TaskResult]:
        return [task for task in self.tasks if task.status == TaskStatus.FAILED]

    def summary(self) -> str:
        scenes = len({s for t in self.tasks for s in t.scenes})
        dropped = sum(len(t.dropped) for t in self.tasks)
        stages = {stage: round(sum(t.seconds.get(stage, 0.0) for t in self.tasks), 1) for stage in STAGES}
        lines = [
            f"{self.count(TaskStatus.DONE)} tile-periods done, {self.count(TaskStatus.EMPTY)} without scenes, "
            f"{self.count(TaskStatus.SKIPPED)} already complete, {self.count(TaskStatus.FAILED)} failed; "
            f"{scenes} scenes used, {dropped} dropped; {self.seconds:.1f} s "
            f"(task time per stage: {', '.join(f'{k} {v} s' for k, v in stages.items())})",
            *(f"  failed {t.tile} {t.period}: {t.error}" for t in self.failed),
        ]
        return "\n".join(lines)

    def save(self, store: Path) -> Path:
        """Write the report to `<store>.runs/run-<started>.json`, whole or not at all (a full disk
        must not leave half a report behind)."""
        target = store.with_name(store.stem + ".runs") / f"run-{self.started.replace(':', '')}.json"
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_suffix(".partial")
        try:
            partial.write_text(json.dumps(asdict(self), indent=1, default=str))
            partial.replace(target)
        finally:
            partial.unlink(missing_ok=True)
        return target
