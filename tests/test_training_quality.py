"""Field-quality measures of a trained encoder (aef_pipeline/training/quality.py)."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest
from pyproj import Transformer

from aef_pipeline.model import STPEncoder, load_spec
from aef_pipeline.model.timecode import MS_PER_DAY, to_ms
from aef_pipeline.model.weights import initialise
from aef_pipeline.testing.world import parcel_index
from aef_pipeline.training.quality import (
    lattice_ratio,
    neighbour_cosine_within,
    parcel_ids,
    teacher_student_cosine,
    unit_vectors,
)
from aef_pipeline.training.trainset import TrainingWindow

YEAR = (to_ms(dt.datetime(2022, 1, 1, tzinfo=dt.UTC)), to_ms(dt.datetime(2023, 1, 1, tzinfo=dt.UTC)))


def _constant(height: int = 12, width: int = 10) -> np.ndarray:
    field = np.zeros((64, height, width), np.float32)
    field[3] = 1.0
    return field


def _blocks(height: int, width: int, block: int, shift: int = 0, cosine: float = 0.0) -> np.ndarray:
    """Blocks of `block` px alternating between two unit vectors with this `cosine`, like a
    checkerboard, starting `shift` px in."""
    rows, cols = np.indices((height, width)) + shift
    odd = ((rows // block + cols // block) % 2).astype(bool)
    field = np.zeros((64, height, width), np.float32)
    field[0] = np.where(odd, cosine, 1.0)
    field[1] = np.where(odd, np.sqrt(1 - cosine**2), 0.0)
    return field


def _random_unit(height: int, width: int, seed: int = 0) -> np.ndarray:
    return unit_vectors(np.random.default_rng(seed).normal(size=(64, height, width)))


def test_a_constant_field_is_smooth_and_has_no_lattice():
    field = _constant()
    labels = np.zeros(field.shape[1:], np.int64)
    assert neighbour_cosine_within(field, labels) == pytest.approx(1.0)
    assert lattice_ratio(field) == pytest.approx(1.0)


def test_a_checkerboard_of_2x2_blocks_is_a_lattice_only_at_its_own_phase():
    assert lattice_ratio(_blocks(16, 16, block=2)) == pytest.approx(0.0)  # orthogonal across, equal within
    assert lattice_ratio(_blocks(16, 16, block=2, cosine=0.5)) == pytest.approx(0.5)
    # Anchored at pixel 0: one pixel off, the pairs inside the pattern's blocks count as across.
    assert lattice_ratio(_blocks(16, 16, block=2, shift=1, cosine=0.5)) == pytest.approx(2.0)
    # 4 px blocks: half of the pairs across 2 px boundaries cross the pattern's, none within.
    assert lattice_ratio(_blocks(17, 17, block=4, cosine=0.5)) == pytest.approx(0.75)


def test_random_vectors_are_unrelated_inside_parcels():
    field = _random_unit(64, 64)
    labels = np.repeat(np.repeat(np.arange(16).reshape(4, 4), 16, axis=0), 16, axis=1)
    assert abs(neighbour_cosine_within(field, labels)) < 0.03


def test_only_pairs_inside_one_parcel_count():
    # Two parcels, left and right, each constant, orthogonal to each other: only the
    # boundary pairs are dissimilar, and they are not inside a parcel.
    field = np.zeros((64, 8, 8), np.float32)
    field[0, :, :4], field[1, :, 4:] = 1.0, 1.0
    labels = np.where(np.arange(8) < 4, 1, 2)[None, :].repeat(8, axis=0)
    assert neighbour_cosine_within(field, labels) == pytest.approx(1.0)
    assert neighbour_cosine_within(field, np.zeros_like(labels)) < 0.95  # one parcel: the edge counts


def test_nodata_pixels_and_negative_ids_are_left_out():
    field = _constant()
    field[:, :, 5:] = -field[:, :, 5:]  # the right half points the other way...
    field[:, :, 5] = np.nan  # ...behind a column of nodata
    labels = np.zeros(field.shape[1:], np.int64)
    assert neighbour_cosine_within(field, labels) == pytest.approx(1.0)
    field[:, :, 5] = field[:, :, 4]
    labels[:, 5] = -1
    assert neighbour_cosine_within(field, labels) == pytest.approx(1.0)


def test_refusals_name_the_problem():
    with pytest.raises(ValueError, match=r"do not match"):
        neighbour_cosine_within(_constant(), np.zeros((3, 3), np.int64))
    with pytest.raises(ValueError, match=r"no pair"):
        neighbour_cosine_within(_constant(), -np.ones((12, 10), np.int64))
    with pytest.raises(ValueError, match=r"block 1"):
        lattice_ratio(_constant(), block=1)


def test_unit_vectors_rescale_and_keep_nodata():
    field = np.full((64, 2, 2), 0.5, np.float32)
    field[:, 1, 1] = np.nan
    unit = unit_vectors(field)
    assert np.sqrt((unit[:, 0, 0] ** 2).sum()) == pytest.approx(1.0)
    assert np.isnan(unit[:, 1, 1]).all()


def test_parcel_ids_follow_the_lon_lat_lattice_from_a_utm_grid():
    parcel = (0.004, 0.003)
    to_utm = Transformer.from_crs(4326, 32633, always_xy=True)
    x0, y0 = to_utm.transform(15.065, 46.2)
    x = x0 + 10 * np.arange(60) + 5
    y = y0 - 10 * np.arange(50) - 5
    ids = parcel_ids(x, y, "EPSG:32633", parcel)
    lon, lat = Transformer.from_crs(32633, 4326, always_xy=True).transform(x[37], y[21])
    col, row = parcel_index(np.array([lon]), np.array([lat]), parcel)
    assert ids[21, 37] == (int(col[0]) << 32) + int(row[0])
    # 600 m x 500 m holds a few parcels of about 310 m x 330 m, each a connected patch
    assert 4 <= np.unique(ids).size <= 9
    assert ((ids[:, 1:] != ids[:, :-1]).sum(axis=1) <= 2).all()


def _window(frames: int, seed: int) -> TrainingWindow:
    rng = np.random.default_rng(seed)
    t_ms = np.sort(rng.choice(np.arange(YEAR[0], YEAR[1], MS_PER_DAY), size=frames, replace=False))
    dn = rng.integers(1000, 3000, size=(frames, 5, 32, 32)).astype(np.uint16)
    clear = rng.random((frames, 32, 32)) > 0.1
    return TrainingWindow(dn=dn, clear=clear, t_ms=t_ms, period_ms=YEAR)


@pytest.fixture(scope="module")
def encoder() -> STPEncoder:
    model = STPEncoder(load_spec("tiny"))
    initialise(model, 0)
    return model.eval()


def test_teacher_student_cosine_is_one_without_a_drop_and_below_with_one(encoder):
    windows = [_window(n, seed) for seed, n in enumerate((12, 7, 1))]
    same = teacher_student_cosine(encoder, windows, np.random.default_rng(0), drop_share=0.0)
    assert same == pytest.approx(1.0, abs=1e-5)
    half = teacher_student_cosine(encoder, windows, np.random.default_rng(0), batch_size=2)
    assert -1.0 < half < 0.9999
    assert teacher_student_cosine(encoder, windows, np.random.default_rng(0), batch_size=2) == half  # seeded
    with pytest.raises(ValueError, match=r"drop_share 1"):
        teacher_student_cosine(encoder, windows, np.random.default_rng(0), drop_share=1.0)
