"""Planning a region: only the tiles its polygons meet, each window the region's extent in the tile
rounded out to whole cores (on the bbox's lattice), from any vector file and CRS; bad files refused."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import shapely
from hypothesis import given, settings
from hypothesis import strategies as st
from pyproj import Transformer

from aef_pipeline.cli import main
from aef_pipeline.errors import UserInputError
from aef_pipeline.grid import DENSIFY_DEGREES, BBox, tiles_for_bbox, utm_epsg, zone_parts
from aef_pipeline.plan import Period, TileTask, plan_tasks
from aef_pipeline.region import Region, RegionClippedWarning, read_region, region_of
from aef_pipeline.run import RunRequest, count_tasks, describe, dry_run
from aef_pipeline.search import CatalogConfig, NoScenesWarning
from aef_pipeline.testing import SyntheticCatalog, write_static_catalog
from aef_pipeline.training.trainset import TrainingSetRequest
from tests.refusals import assert_refused

PERIODS = (Period.year(2022),)
CORE = 16  # tiny's


def boxes(*bounds: tuple[float, float, float, float]) -> Region:
    return region_of(np.array([shapely.box(*b) for b in bounds], dtype=object), "boxes")


def bbox_plan(*bounds: tuple[float, float, float, float]) -> list[TileTask]:
    """The bbox plans of separate boxes, together, in plan order."""
    tasks = [task for b in bounds for task in plan_tasks(BBox(*b), PERIODS, CORE)]
    return sorted(tasks, key=lambda task: task.tile)


# --- which tiles, which windows ----------------------------------------------------------------


def test_two_far_apart_areas_plan_only_their_tiles() -> None:
    # Two 2 km squares 160 km apart in zone 33: their own few tiles, not the ~50 of their bbox.
    west, east = (15.10, 46.10, 15.126, 46.118), (16.60, 47.10, 16.626, 47.118)
    tasks = plan_tasks(boxes(west, east), PERIODS, CORE)
    assert tasks == bbox_plan(west, east)
    assert len(tasks) <= 4
    assert len(plan_tasks(BBox(15.10, 46.10, 16.626, 47.118), PERIODS, CORE)) > 10 * len(tasks)


def test_areas_in_two_utm_zones_plan_each_zone_s_tiles() -> None:
    # One square in zone 32, one across the 33/34 edge at 18 E: tiles of all three zones' plans.
    far, edge = (10.40, 50.00, 10.43, 50.02), (17.98, 50.00, 18.02, 50.02)
    tasks = plan_tasks(boxes(far, edge), PERIODS, CORE)
    assert tasks == bbox_plan(far, edge)
    assert {task.tile.zone for task in tasks} == {32, 33, 34}
    assert len(plan_tasks(BBox(10.40, 50.00, 18.02, 50.02), PERIODS, CORE)) > 10 * len(tasks)


@pytest.mark.parametrize(
    "bounds",
    [
        (15.03, 46.11, 15.41, 46.37),  # inside one zone
        (17.5, -0.3, 18.6, 0.4),  # across a zone edge and the equator
        (-2.1, 51.0, 3.3, 52.2),  # across two zone edges
    ],
)
def test_a_box_region_plans_what_its_bbox_plans(bounds: tuple[float, float, float, float]) -> None:
    # Tiles and windows alike, those across a zone edge or the equator included (their windows
    # hold the region beyond the zone band, as a bbox's do).
    assert plan_tasks(boxes(bounds), PERIODS, CORE) == plan_tasks(BBox(*bounds), PERIODS, CORE)


def test_a_region_split_at_the_antimeridian_plans_what_a_bbox_across_it_plans() -> None:
    region = boxes((179.6, 60.0, 180.0, 60.4), (-180.0, 60.0, -179.6, 60.4))
    across = BBox(179.6, 60.0, -179.6, 60.4, crosses_antimeridian=True)
    tasks = plan_tasks(region, PERIODS, CORE)
    assert tasks == plan_tasks(across, PERIODS, CORE)
    assert {task.tile.zone for task in tasks} == {1, 60}


TRIANGLE = shapely.Polygon([(17.2, 45.6), (18.6, 46.1), (17.5, 46.9)])  # across the 33/34 zone edge


def test_a_coastline_like_triangle_plans_fewer_tiles_than_its_bbox_each_one_it_meets() -> None:
    region = region_of(np.array([TRIANGLE], dtype=object), "triangle")
    tasks = plan_tasks(region, PERIODS, CORE)
    assert len(tasks) < 0.7 * len(plan_tasks(region.bbox, PERIODS, CORE))
    _check_exact(region, tasks)


def test_periods_repeat_each_window_in_order() -> None:
    region = region_of(np.array([TRIANGLE], dtype=object), "triangle")
    both = plan_tasks(region, (Period.year(2021), Period.year(2022)), CORE)
    once = plan_tasks(region, (Period.year(2022),), CORE)
    assert [(t.tile, t.window) for t in both[1::2]] == [(t.tile, t.window) for t in once]
    assert [t.tile for t in once] == sorted(t.tile for t in once)


@pytest.mark.parametrize(
    "wkt",
    [
        "POLYGON ((0 0.5, 0 1.5, 1 0.5, 0 0.5))",  # an edge along a zone edge (0 E)
        "POLYGON ((14 0, 15 0, 14.5 -0.5, 14 0))",  # an edge along the equator
        "POLYGON ((179.2 60, 180 60, 180 60.7, 179.2 60))",  # an edge along the antimeridian
        # A hair (1e-9 degrees) into zone 32: a sliver narrower than the densification error, whose
        # sides cross after projection (GEOS's rectangle clip then returned whole tiles).
        "POLYGON ((11.999999999 -30.18, 11.999999999 -29.88, 12.999999999 -29.58, 12.999999999 -29.98, "
        "11.999999999 -30.18))",
        # A hair (1e-225 degrees) into zone 30: the zone-31 rim's clip ends there, and its crossings
        # rounded out of order, so GEOS's rectangle clip returned the whole rim (a window from row 0).
        "POLYGON ((-1.5185755988085208e-225 0.07778231653528335, 1 0, 1 1, "
        "-1.5185755988085208e-225 0.07778231653528335))",
    ],
)
def test_shapes_on_the_grid_s_seams_plan_exactly(wkt: str) -> None:
    region = region_of(np.array([shapely.from_wkt(wkt)], dtype=object), "seam")
    for core in (16, 96):
        _check_exact(region, plan_tasks(region, PERIODS, core), core)


triangles = st.tuples(st.floats(-179.0, 178.0), st.floats(-79.0, 82.0), *(st.floats(0.0, 1.0) for _ in range(6))).map(
    lambda t: shapely.Polygon([(t[0] + t[2], t[1] + t[3]), (t[0] + t[4], t[1] + t[5]), (t[0] + t[6], t[1] + t[7])])
)


# Derandomized: the same examples every run, so CI passes or fails the same way for the same code
# (random ones differ per run, and a rare failure would come and go); a failure it once found stays
# as a row of test_shapes_on_the_grid_s_seams_plan_exactly.
@settings(max_examples=12, deadline=None, derandomize=True)
@given(triangle=triangles, core=st.sampled_from([16, 96]))
def test_any_triangle_plans_exactly_the_tiles_it_meets(triangle: shapely.Polygon, core: int) -> None:
    if triangle.area < 1e-6:
        return
    region = region_of(np.array([triangle], dtype=object), "triangle")
    _check_exact(region, plan_tasks(region, PERIODS, core), core)


def _check_exact(region: Region, tasks: list[TileTask], core: int = CORE) -> None:
    """Tile by tile, against plain shapely: a tile is planned iff its zone band's part of the
    region meets it in a positive area (to within 1 m^2 and 1 m: a region that touches a zone
    edge or a tile's side may or may not count); its window holds all of the region in the tile,
    and each of the window's four edge rows or columns of cores meets the region (so no window is
    a core wider than the region needs)."""
    windows = {task.tile: task.window for task in tasks}
    must, may = set(), set()
    for zone, hemisphere, band in zone_parts(region.bbox):
        part = _projected(region.geometry.intersection(shapely.box(*band.boundingbox)), utm_epsg(zone, hemisphere))
        for tile in tiles_for_bbox(BBox(*band.boundingbox)):
            if (tile.zone, tile.hemisphere) == (zone, hemisphere):
                footprint = shapely.box(*tile.geobox.extent.boundingbox)
                must |= {tile} if part.intersection(footprint).area > 1 else set()
                may |= {tile} if part.intersects(footprint.buffer(1)) else set()
    assert must <= set(windows) <= may
    for tile in must:
        r0, r1, c0, c1 = windows[tile]
        inside = _projected(region.geometry, tile.epsg).intersection(shapely.box(*tile.geobox.extent.boundingbox))
        assert shapely.box(*tile.geobox[r0:r1, c0:c1].extent.boundingbox).buffer(1).contains(inside), str(tile)
        edges = [(r0, r0 + core, c0, c1), (r1 - core, r1, c0, c1), (r0, r1, c0, c0 + core), (r0, r1, c1 - core, c1)]
        for e0, e1, f0, f1 in edges:
            edge = shapely.box(*tile.geobox[e0:e1, f0:f1].extent.boundingbox)
            assert edge.intersects(inside.buffer(1)), (str(tile), (e0, e1, f0, f1))


def _projected(geometry: shapely.Geometry, epsg: int) -> shapely.Geometry:
    """Lon/lat edges densified (grid.DENSIFY_DEGREES), then projected to UTM."""
    to_utm = Transformer.from_crs("EPSG:4326", f"EPSG:{epsg}", always_xy=True)
    return shapely.transform(
        shapely.segmentize(geometry, DENSIFY_DEGREES), lambda xy: np.column_stack(to_utm.transform(xy[:, 0], xy[:, 1]))
    )


# --- files ---------------------------------------------------------------------------------------


def test_geojson_geopackage_and_geoparquet_in_web_mercator_give_the_same_tasks(tmp_path: Path) -> None:
    source = gpd.GeoDataFrame(
        {"name": ["triangle", "square"]}, geometry=[TRIANGLE, shapely.box(15.1, 46.1, 15.2, 46.2)]
    )
    frame = source.set_crs("EPSG:4326").to_crs("EPSG:3857")
    frame.to_file(tmp_path / "areas.geojson")
    frame.to_file(tmp_path / "areas.gpkg")
    frame.to_parquet(tmp_path / "areas.parquet")
    expected = plan_tasks(region_of(np.asarray(source.geometry.array, dtype=object), "4326"), PERIODS, CORE)
    for name in ("areas.geojson", "areas.gpkg", "areas.parquet"):
        region = read_region(tmp_path / name)
        assert region.source == name
        assert len(region.geometry.geoms) == 2
        assert plan_tasks(region, PERIODS, CORE) == expected, name


def test_a_region_beyond_the_utm_latitudes_is_cut_off_with_a_warning() -> None:
    with pytest.warns(RegionClippedWarning, match=r"reaches 83\.5\.\.85 degrees of latitude: only -80\.\.84"):
        region = boxes((10.0, 83.5, 11.0, 85.0))
    assert region.bbox == BBox(10.0, 83.5, 11.0, 84.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RegionClippedWarning)
        with pytest.raises(UserInputError, match="no area within the UTM latitudes"):
            boxes((10.0, 85.0, 11.0, 86.0))


def test_invalid_polygons_are_repaired() -> None:
    bowtie = shapely.Polygon([(15.0, 46.0), (15.2, 46.2), (15.2, 46.0), (15.0, 46.2)])
    region = region_of(np.array([bowtie], dtype=object), "bowtie")
    assert len(region.geometry.geoms) == 2
    assert region.bbox == BBox(15.0, 46.0, 15.2, 46.2)


# --- the request, its record, the commands -------------------------------------------------------


def test_the_run_records_its_region_and_tasks_travel_without_it(tmp_path: Path) -> None:
    region = boxes((15.10, 46.10, 15.126, 46.118))
    request = RunRequest(region.bbox, PERIODS, tmp_path / "f.zarr", region=region)
    recorded = describe(request)["region"]
    assert recorded == {"source": "boxes", "polygons": 1, "sha256": region.sha256}
    other = boxes((15.10, 46.10, 15.126, 46.119))
    assert other.sha256 != region.sha256
    assert request.area is region
    assert request.for_tasks().region is None
    assert "region" not in describe(request.for_tasks())
    with pytest.raises(ValueError, match=r"bbox=region\.bbox"):
        RunRequest(BBox(15.0, 46.0, 15.2, 46.2), PERIODS, tmp_path / "f.zarr", region=region)
    training = TrainingSetRequest(region.bbox, PERIODS, tmp_path / "t.zarr", region=region)
    assert training.describe()["region"] == recorded
    assert training.area is region
    assert training.for_tasks().region is None


def test_a_dry_run_of_a_region_searches_only_its_tasks(earth_search_catalog: SyntheticCatalog) -> None:
    # A square at the test bed's site, and one 130 km away where the test bed has no scenes.
    region = boxes((15.060, 46.197, 15.070, 46.203), (16.50, 46.80, 16.51, 46.81))
    catalog = CatalogConfig(str(write_static_catalog(earth_search_catalog)))
    request = RunRequest(region.bbox, PERIODS, Path("unused"), catalog, region=region)
    with pytest.warns(NoScenesWarning):
        plan = dry_run(request)
    assert [cost.task for cost in plan.costs] == plan_tasks(region, PERIODS, CORE)
    assert [cost.scenes > 0 for cost in plan.costs] == [True, False]
    assert len(plan_tasks(region.bbox, PERIODS, CORE)) > 5 * len(plan.costs)
    counts = count_tasks(request)
    assert (counts.tasks, counts.pixels, counts.store_bytes) == (len(plan.costs), plan.pixels, plan.store_bytes)


def test_plan_no_search_prints_the_counts_of_a_region(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "areas.gpkg"
    gpd.GeoDataFrame(geometry=[TRIANGLE], crs="EPSG:4326").to_file(path)
    # --stac points nowhere: --no-search must not open it.
    argv = ["plan", "--region", str(path), "--years", "2021-2022", "--no-search", "--stac", "http://127.0.0.1:9/"]
    assert main(argv) == 0
    tasks = plan_tasks(read_region(path), (Period.year(2021), Period.year(2022)), CORE)
    tiles = len({task.tile for task in tasks})
    pixels = sum(task.pixels for task in tasks)
    out = capsys.readouterr().out.splitlines()
    assert out[0] == (
        f"{len(tasks):,} tasks ({tiles:,} tile windows in 2 UTM zones/hemispheres), {pixels:,} px, "
        f"~{pixels * 66 / 1e9:,.2f} GB to write (int8), model tiny"
    )
    assert out[1].startswith("no catalog searched (--no-search)")


def test_a_config_file_may_give_the_region(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "areas.geojson"
    gpd.GeoDataFrame(geometry=[TRIANGLE], crs="EPSG:4326").to_file(path)
    config = tmp_path / "plan.toml"
    config.write_text(f'region = "{path}"\nyears = "2022"\n')
    assert main(["plan", "--config", str(config), "--no-search"]) == 0
    assert capsys.readouterr().out.startswith(f"{len(plan_tasks(read_region(path), PERIODS, CORE)):,} tasks")


@pytest.mark.parametrize("command", [["plan"], ["train-set", "--out", "{tmp}/t.zarr"]])
def test_every_area_command_takes_a_region_or_a_bbox_not_both(
    command: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "areas.geojson").write_text(
        json.dumps({"type": "Polygon", "coordinates": [[[15, 46], [15.1, 46], [15.1, 46.1], [15, 46]]]})
    )
    area = ["--region", str(tmp_path / "areas.geojson"), "--bbox", "15", "46", "15.1", "46.1", "--years", "2022"]
    argv = [arg.format(tmp=tmp_path) for arg in command]
    assert_refused([*argv, *area], "both --bbox and --region given", tmp_path, capsys)
    assert_refused([*argv, "--years", "2022"], "pass --bbox W S E N or --region FILE", tmp_path, capsys)
