"""The run's log: one JSON line per step with every loss term, and a PNG of the curves at the end.

    {"step": 12, "loss": 0.41, "reconstruction": 0.39, "uniformity": 0.21, "consistency": 0.004, "lr": 0.0006, ...}
    {"step": 0, "eval": true, "reconstruction": 0.80, ...}   # the fixed evaluation batch

On resume the lines after the checkpoint's step are dropped, so the log never holds a step twice.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

LOG_FILE, CURVES_FILE = "log.jsonl", "curves.png"
TERMS = ("reconstruction", "uniformity", "consistency", "text")


def append(run_dir: Path, record: dict[str, Any]) -> None:
    with (run_dir / LOG_FILE).open("a") as handle:
        handle.write(json.dumps(record) + "\n")


def read(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / LOG_FILE
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def truncate(run_dir: Path, step: int) -> None:
    """Keep the records up to `step`, the checkpoint a resumed run starts from."""
    kept = [r for r in read(run_dir) if r["step"] <= step]
    (run_dir / LOG_FILE).write_text("".join(json.dumps(r) + "\n" for r in kept))


def draw_curves(run_dir: Path) -> Path:
    """Every loss term against the step (training batches as thin lines, the fixed evaluation
    batch as dots), each in its own panel on a log scale, and the learning rate."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    records = read(run_dir)
    steps = [r for r in records if not r.get("eval")]
    evals = [r for r in records if r.get("eval")]
    names = [t for t in (*TERMS, "loss") if any(t in r for r in records)] + ["lr"]
    figure = Figure(figsize=(3.2 * len(names), 3.0), layout="constrained")
    FigureCanvasAgg(figure)
    for axis, name in zip(figure.subplots(1, len(names), squeeze=False)[0], names, strict=True):
        _panel(axis, name, steps, evals)
    path = run_dir / CURVES_FILE
    figure.savefig(path, dpi=110)
    return path


def _panel(axis: Any, name: str, steps: list[dict[str, Any]], evals: list[dict[str, Any]]) -> None:
    train = [(r["step"], r[name]) for r in steps if _finite(r.get(name))]
    if train:
        axis.plot(*zip(*train, strict=True), lw=0.8, label="training batches")
    held = [(r["step"], r[name]) for r in evals if _finite(r.get(name))]
    if held:
        axis.plot(*zip(*held, strict=True), "o-", ms=3, label="fixed evaluation batch")
    if train and min(v for _, v in train) > 0:
        axis.set_yscale("log")
    axis.set_title(name)
    axis.set_xlabel("step")
    if name == "reconstruction":
        axis.legend(fontsize=7)


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)
