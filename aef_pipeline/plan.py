"""Periods of time the pipeline summarises; the pure half of planning (tiles live in grid.py)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from aef_pipeline.errors import UserInputError

# Sentinel-2A's first images: nothing to search before this.
SENTINEL2_START = dt.datetime(2015, 6, 23, tzinfo=dt.UTC)


@dataclass(frozen=True, order=True)
class Period:
    """A half-open UTC interval [start, end): the valid period of one embedding layer."""

    start: dt.datetime
    """First instant included (timezone-aware UTC)."""
    end: dt.datetime
    """First instant excluded."""

    def __post_init__(self) -> None:
        if self.start.tzinfo is None or self.end.tzinfo is None:
            raise ValueError("Period bounds must be timezone-aware (UTC)")
        if self.end <= self.start:
            raise UserInputError(f"period {self.start:%Y-%m-%d}..{self.end:%Y-%m-%d} is empty: end must follow start")

    @classmethod
    def year(cls, year: int) -> Period:
        """The calendar year, as the published annual layers use."""
        return cls(dt.datetime(year, 1, 1, tzinfo=dt.UTC), dt.datetime(year + 1, 1, 1, tzinfo=dt.UTC))

    @property
    def label(self) -> str:
        """ "2021" for a calendar year, else "2021-03-01_2021-06-01"."""
        if self == Period.year(self.start.year):
            return str(self.start.year)
        return f"{self.start:%Y-%m-%d}_{self.end:%Y-%m-%d}"

    def stac_interval(self) -> str:
        """The STAC `datetime` search parameter. STAC intervals are closed, so the end is the last
        millisecond inside the period (Sentinel-2 timestamps carry at most microseconds)."""
        last = self.end - dt.timedelta(milliseconds=1)
        return f"{_iso(self.start)}/{_iso(last)}"

    def contains(self, when: dt.datetime) -> bool:
        return self.start <= when < self.end


def _iso(when: dt.datetime) -> str:
    return when.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
