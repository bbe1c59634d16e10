"""Held-out targets and the student's perturbations (aef_pipeline/training/views.py)."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest
import torch

from aef_pipeline.model import STPEncoder, load_spec
from aef_pipeline.model.timecode import MS_PER_DAY, to_ms
from aef_pipeline.model.weights import initialise
from aef_pipeline.training.trainset import TrainingWindow
from aef_pipeline.training.views import (
    HALF_YEAR_MS,
    MIN_PERIOD_MS,
    FrameBatch,
    Perturbation,
    TargetPolicy,
    collate,
    split_views,
)

YEAR = (to_ms(dt.datetime(2021, 1, 1, tzinfo=dt.UTC)), to_ms(dt.datetime(2022, 1, 1, tzinfo=dt.UTC)))


def _window(frames: int, seed: int, size: int = 32) -> TrainingWindow:
    """`frames` acquisitions spread over 2021, DN around 1000-3000, a few cloudy pixels."""
    rng = np.random.default_rng(seed)
    t_ms = np.sort(rng.choice(np.arange(YEAR[0], YEAR[1], MS_PER_DAY), size=frames, replace=False))
    dn = rng.integers(1000, 3000, size=(frames, 5, size, size)).astype(np.uint16)
    clear = rng.random((frames, size, size)) > 0.1
    return TrainingWindow(dn=dn, clear=clear, t_ms=t_ms, period_ms=YEAR)


@pytest.fixture(scope="module")
def spec():
    return load_spec("tiny")


def _frames_of(batch: FrameBatch, i: int) -> list[int]:
    """Acquisition times of window i's present frames."""
    return batch.t_ms[i][batch.present[i]].tolist()


def test_targets_are_held_out_from_teacher_and_student(spec):
    windows = [_window(n, seed) for seed, n in enumerate((36, 12, 3, 2))]
    batch = collate(windows, spec)
    views = split_views(batch, np.random.default_rng(0), TargetPolicy())
    for i, window in enumerate(windows):
        targets, teacher = set(_frames_of(views.targets, i)), set(_frames_of(views.teacher, i))
        assert targets.isdisjoint(teacher)
        assert targets | teacher == set(window.t_ms.tolist())
        assert set(_frames_of(views.student, i)) <= teacher
    # 25 % held out, at least one, at most four, never every frame
    assert [len(_frames_of(views.targets, i)) for i in range(4)] == [4, 3, 1, 1]


def test_each_perturbation_drops_the_right_frames_and_sets_the_right_period(spec):
    windows = [_window(40, seed) for seed in range(24)]
    batch = collate(windows, spec)
    views = split_views(batch, np.random.default_rng(1), TargetPolicy())
    seen = set()
    for i in range(len(windows)):
        kind = Perturbation(int(views.perturbation[i]))
        seen.add(kind)
        teacher, student = np.asarray(_frames_of(views.teacher, i)), np.asarray(_frames_of(views.student, i))
        start, end = views.consistency_ms[i].tolist()
        if kind == Perturbation.FORECAST:
            assert student.tolist() == teacher[teacher < YEAR[1] - HALF_YEAR_MS].tolist()
            assert (start, end) == (YEAR[1] - HALF_YEAR_MS, YEAR[1])
        elif kind == Perturbation.BACKCAST:
            assert student.tolist() == teacher[teacher >= YEAR[0] + HALF_YEAR_MS].tolist()
            assert (start, end) == (YEAR[0], YEAR[0] + HALF_YEAR_MS)
        else:
            assert set(student.tolist()) <= set(teacher.tolist())
            assert len(student) == len(teacher) - round(0.5 * len(teacher))
            assert YEAR[0] <= start
            assert end <= YEAR[1]
            assert end - start >= MIN_PERIOD_MS
    assert seen == set(Perturbation)


def test_views_carry_the_values_of_their_frames(spec):
    batch = collate([_window(10, 3)], spec)
    views = split_views(batch, np.random.default_rng(2), TargetPolicy())
    for view in (views.teacher, views.student, views.targets):
        for slot, t in enumerate(_frames_of(view, 0)):
            source = int(np.flatnonzero(batch.t_ms[0].numpy() == t)[0])
            assert torch.equal(view.x[0, slot], batch.x[0, source])
            assert torch.equal(view.clear[0, slot], batch.clear[0, source])
        padded = ~view.present[0]
        assert not view.valid[0, padded].any()
        assert not view.x[0, padded].any()


def test_the_same_seed_gives_the_same_views(spec):
    batch = collate([_window(20, s) for s in range(3)], spec)
    one = split_views(batch, np.random.default_rng(5), TargetPolicy())
    two = split_views(batch, np.random.default_rng(5), TargetPolicy())
    assert torch.equal(one.student.t_ms, two.student.t_ms)
    assert torch.equal(one.consistency_ms, two.consistency_ms)


def test_an_embedding_has_exactly_zero_gradient_from_held_out_frames(spec):
    """The identity leak of the seed repository, ruled out: a held-out frame reaches no encoder input."""
    batch = collate([_window(8, 7), _window(6, 8)], spec)
    x = batch.x.clone().requires_grad_(True)
    batch = type(batch)(x, batch.valid, batch.clear, batch.t_ms, batch.present, batch.support_ms)
    views = split_views(batch, np.random.default_rng(3), TargetPolicy())
    encoder = STPEncoder(spec)
    initialise(encoder, 0)
    for view in (views.teacher, views.student):
        out = encoder(view.x, view.valid, view.t_ms, views.consistency_ms)
        (gradient,) = torch.autograd.grad(out.square().sum() + out.sum(), x, retain_graph=True)
        for i in range(2):
            held = np.isin(batch.t_ms[i].numpy(), _frames_of(views.targets, i))
            assert held.any()
            assert torch.count_nonzero(gradient[i, held]) == 0
    # ... while the teacher's frames do matter
    kept = np.isin(batch.t_ms[0].numpy(), _frames_of(views.teacher, 0))
    out = encoder(views.teacher.x, views.teacher.valid, views.teacher.t_ms, views.teacher.support_ms)
    (gradient,) = torch.autograd.grad(out.sum(), x)
    assert torch.count_nonzero(gradient[0, kept]) > 0


def test_clouds_feed_the_encoder_only_when_the_spec_says_so(spec):
    import dataclasses

    window = _window(4, 9)
    masked = collate([window], spec)
    unmasked = collate([window], dataclasses.replace(spec, mask_clouds=False))
    assert torch.equal(masked.valid[0, :4], torch.from_numpy(window.clear))
    assert bool(unmasked.valid[0, :4].all())
    assert torch.equal(masked.clear, unmasked.clear)  # the loss weights stay the clear pixels
