"""Figures, their targets and where they were measured: one table for people, one JSON for tools."""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch


@dataclass
class Figure:
    """One measured number, next to its reference (both measured in this run) and its target."""

    number: int
    """The figure's number in the benchmark issue (1 encoder ... 7 cost)."""
    name: str
    value: float | None
    """None: not measured in this run (`note` says why)."""
    unit: str
    target: str = ""
    """e.g. ">= 0.7"; empty when the figure has no target."""
    sizes: str = ""
    note: str = ""
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def met(self) -> bool | None:
        if self.value is None or not self.target:
            return None
        op, bound = self.target.split()
        return self.value >= float(bound) if op == ">=" else self.value <= float(bound)


def machine() -> dict[str, Any]:
    return {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "host": platform.node(),
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def format_value(figure: Figure) -> str:
    if figure.value is None:
        return "not measured"
    value = figure.value
    text = f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"
    return f"{text} {figure.unit}".strip()


def print_table(figures: list[Figure], info: dict[str, Any]) -> None:
    print(
        f"\nmachine: {info['cpu']}, {info['cores']} cores, GPU {info['gpu'] or 'none'}; "
        f"torch {info['torch']}; {info['date']}"
    )
    rows = [("#", "figure", "value", "target", "met", "sizes / note")]
    for f in figures:
        met = {True: "yes", False: "NO", None: "-"}[f.met]
        rows.append(
            (str(f.number), f.name, format_value(f), f.target or "-", met, "; ".join(filter(None, [f.sizes, f.note])))
        )
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row[:5], widths, strict=True)) + "  " + row[5])


def save_json(figures: list[Figure], info: dict[str, Any], command: str, path: Path) -> None:
    body = {"command": command, "machine": info, "figures": [{**asdict(f), "met": f.met} for f in figures]}
    path.write_text(json.dumps(body, indent=1, default=str))
