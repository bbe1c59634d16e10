"""Periods of time the pipeline summarises; the pure half of planning (tiles live in grid.py)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from aef_pipeline.errors import UserInputError

# Sentinel-2A's first images: nothing to search before this.
SENTINEL2_START = dt.datetime(2015, 6, 23, tzinfo=dt.UTC)
# The years the product covers (annual layers, as the published embeddings).
PRODUCT_YEARS = (2017, 2024)


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


def parse_years(text: str, first: int, last: int) -> tuple[int, ...]:
    """ "2020" -> (2020,); "2017-2019" -> (2017, 2018, 2019); "2018,2020" -> (2018, 2020)."""
    years: list[int] = []
    for part in text.split(","):
        start, sep, end = part.strip().partition("-")
        try:
            span = range(int(start), int(end) + 1) if sep else range(int(start), int(start) + 1)
        except ValueError:
            raise UserInputError(
                f"--years {text!r} is not understood: write a year (2020), a range (2017-2024) or a list (2018,2020)"
            ) from None
        if not span:
            raise UserInputError(f"--years {part.strip()!r} is an inverted range: write the earlier year first")
        if span[0] < first or span[-1] > last:
            raise UserInputError(f"--years {text!r} is outside {first}-{last}: choose years in that range")
        years.extend(span)
    return tuple(sorted(set(years)))


def parse_periods(years: str | None, periods: list[str]) -> tuple[Period, ...]:
    """--years (2017-2024) and repeatable --period START/END (ISO dates, UTC) -> sorted periods."""
    found = [Period.year(y) for y in parse_years(years, *PRODUCT_YEARS)] if years else []
    for text in periods:
        start, sep, end = text.partition("/")
        try:
            if not sep:
                raise ValueError
            found.append(Period(_utc_date(start), _utc_date(end)))
        except ValueError:
            raise UserInputError(
                f"--period {text!r} is not understood: write START/END as ISO dates, e.g. 2021-03-01/2021-09-01"
            ) from None
    if not found:
        raise UserInputError("no period given: pass --years (e.g. 2017-2024) or --period START/END")
    return tuple(sorted(set(found)))


def _utc_date(text: str) -> dt.datetime:
    when = dt.datetime.fromisoformat(text.strip())
    return when.replace(tzinfo=dt.UTC) if when.tzinfo is None else when.astimezone(dt.UTC)
