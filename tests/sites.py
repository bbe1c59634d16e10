"""Areas and periods several test modules share, so that fixtures built once serve them all."""

from __future__ import annotations

from aef_pipeline.grid import BBox
from aef_pipeline.plan import Period

SMALL = BBox(15.062, 46.197, 15.068, 46.203)
"""One tile of the test bed, a few windows: one task per period."""
SMALL_ARGS = [str(v) for v in (SMALL.west, SMALL.south, SMALL.east, SMALL.north)]
"""SMALL as the CLI's --bbox W S E N."""
BOTH_YEARS = (Period.year(2021), Period.year(2022))
