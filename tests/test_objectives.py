"""The training objectives: numbers checked against closed forms, high-precision references and
plain re-implementations."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.multiprocessing.spawn import spawn

from aef_pipeline.training.objectives import (
    VMF_KAPPA,
    ImplicitDecoder,
    LossWeights,
    TextHead,
    batch_uniformity,
    bessel_ratio,
    clip_loss,
    consistency,
    period_fraction,
    reconstruction_loss,
    sample_vmf,
    shift_invariant_l1,
)


def _unit(*shape: int, seed: int = 0, dim: int = -1) -> torch.Tensor:
    return F.normalize(torch.randn(*shape, generator=torch.Generator().manual_seed(seed)), dim=dim)


def test_loss_weights_are_the_papers() -> None:
    weights = LossWeights()
    assert (weights.reconstruction, weights.uniformity, weights.consistency, weights.text) == (1.0, 0.05, 0.02, 0.001)
    assert VMF_KAPPA == 8000.0


# --- vMF ---------------------------------------------------------------------------------------

# References: mpmath.besseli(D/2, k) / mpmath.besseli(D/2 - 1, k) at 40 digits.
BESSEL_RATIOS = [
    (64, 8000.0, 0.99607000676960054),
    (64, 10.0, 0.15271190419708314),
    (64, 1e5, 0.99968504803797923),
    (2, 1.0, 0.44638996589653451),
    (5, 0.3, 0.059846328771362316),
    (1024, 50.0, 0.048712485232294885),
]


@pytest.mark.parametrize(("dim", "kappa", "expected"), BESSEL_RATIOS)
def test_bessel_ratio_matches_high_precision_values(dim: int, kappa: float, expected: float) -> None:
    assert bessel_ratio(kappa, dim) == pytest.approx(expected, rel=1e-13)


@pytest.mark.parametrize("kappa", [0.1, 1.0, 7.5, 8000.0, 1e7])
def test_bessel_ratio_on_the_two_sphere_is_coth_minus_inverse(kappa: float) -> None:
    assert bessel_ratio(kappa, 3) == pytest.approx(1 / math.tanh(kappa) - 1 / kappa, rel=1e-12)


@pytest.mark.parametrize(("kappa", "dim"), [(0.0, 64), (-1.0, 64), (math.inf, 64), (1.0, 1)])
def test_bessel_ratio_refuses_bad_arguments(kappa: float, dim: int) -> None:
    with pytest.raises(ValueError, match="bessel_ratio needs dim >= 2"):
        bessel_ratio(kappa, dim)


@pytest.mark.parametrize(
    ("dim", "kappa", "n"), [(64, VMF_KAPPA, 200_000), (64, 10.0, 50_000), (3, 1.0, 50_000), (2, 0.5, 50_000)]
)
def test_vmf_cosines_have_the_moments_of_the_distribution(dim: int, kappa: float, n: int) -> None:
    """E[w] = A_D(kappa) and E[w^2] = 1 - (D - 1) A_D(kappa) / kappa, to 6 standard errors: at kappa
    8e3 that is 1e-5 around A_64 = 0.99607 (FIELD-NOTES section 9)."""
    mu = _unit(n, dim)
    z = sample_vmf(mu, kappa, torch.Generator().manual_seed(1))
    w = (z.double() * mu.double()).sum(-1)
    ratio = bessel_ratio(kappa, dim)
    for moment, expected in [(w, ratio), (w.square(), 1 - (dim - 1) * ratio / kappa)]:
        assert abs(moment.mean().item() - expected) < 6 * moment.std().item() / math.sqrt(n)
    torch.testing.assert_close(z.norm(dim=-1), torch.ones(n), atol=1e-6, rtol=0)


def test_vmf_tangent_directions_average_out() -> None:
    """E[z] = A_D(kappa) mu: the component orthogonal to mu has mean zero in every direction."""
    n = 100_000
    mu = _unit(64).expand(n, 64)
    z = sample_vmf(mu, 10.0, torch.Generator().manual_seed(2)).double()
    mean = z.mean(0)
    expected = bessel_ratio(10.0, 64) * mu[0].double()
    assert (mean - expected).abs().max().item() < 5 * 0.125 / math.sqrt(n)  # 5 standard errors


def test_vmf_at_kappa_8000_stays_about_5_degrees_from_mu() -> None:
    mu = _unit(1000, 64)
    z = sample_vmf(mu, VMF_KAPPA, torch.Generator().manual_seed(3))
    angle = torch.rad2deg(torch.arccos((z * mu).sum(-1).clamp(max=1)))
    assert 4.0 < angle.mean().item() < 6.0
    assert angle.max().item() < 9.0


def test_vmf_is_reproducible_from_a_seed() -> None:
    mu = _unit(8, 64)
    first = sample_vmf(mu, VMF_KAPPA, torch.Generator().manual_seed(7))
    again = sample_vmf(mu, VMF_KAPPA, torch.Generator().manual_seed(7))
    other = sample_vmf(mu, VMF_KAPPA, torch.Generator().manual_seed(8))
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


def test_vmf_keeps_shape_and_dtype() -> None:
    mu = _unit(2, 3, 5, 64).to(torch.float64)
    z = sample_vmf(mu, VMF_KAPPA, torch.Generator().manual_seed(0))
    assert z.shape == mu.shape
    assert z.dtype == torch.float64


def test_vmf_gradient_through_mu_is_exact() -> None:
    """With w and the noise fixed by the seed, z is a smooth function of mu: gradcheck it."""
    mu = _unit(3, 8).double().requires_grad_()

    def draw(m: torch.Tensor) -> torch.Tensor:
        return sample_vmf(m, 50.0, torch.Generator().manual_seed(5))

    assert torch.autograd.gradcheck(draw, (mu,))
    loss = (draw(mu) * _unit(3, 8, seed=9).double()).sum()
    torch.autograd.backward(loss)
    assert mu.grad is not None
    assert torch.isfinite(mu.grad).all()
    assert mu.grad.abs().sum() > 0


@pytest.mark.parametrize(("dim", "kappa"), [(1, VMF_KAPPA), (64, 0.0), (64, math.inf)])
def test_vmf_refuses_bad_arguments(dim: int, kappa: float) -> None:
    with pytest.raises(ValueError, match="dimension >= 2 and a finite kappa > 0"):
        sample_vmf(torch.ones(4, dim), kappa)


# --- Period fraction ---------------------------------------------------------------------------

YEAR_MS = 365 * 86_400_000
START_MS = 1_704_067_200_000  # 2024-01-01


def test_period_fraction_places_instants_within_their_period() -> None:
    t = torch.tensor([START_MS, START_MS + YEAR_MS // 2, START_MS + YEAR_MS - 1, START_MS + 10])
    periods = torch.tensor([[START_MS, START_MS + YEAR_MS]] * 3 + [[START_MS, START_MS + 40]])
    s = period_fraction(t, periods)
    assert s.dtype == torch.float32
    assert s[:2].tolist() == [0.0, 0.5]
    assert 0.999999 < s[2].item() < 1.0  # 1 ms before the end: float32 would round it to 1.0
    assert s[3].item() == 0.25


@pytest.mark.parametrize("t", [START_MS - 1, START_MS + YEAR_MS])
def test_period_fraction_refuses_instants_outside_their_period(t: int) -> None:
    periods = torch.tensor([[[START_MS, START_MS + 10]], [[START_MS, START_MS + YEAR_MS]]])
    instants = torch.tensor([[START_MS + 5], [t]])
    with pytest.raises(ValueError, match=rf"instant {t} ms at index \(1, 0\) lies outside .* \[{START_MS}, "):
        period_fraction(instants, periods)


def test_period_fraction_refuses_empty_periods_and_float_times() -> None:
    with pytest.raises(ValueError, match="outside its summary period"):
        period_fraction(torch.tensor([START_MS]), torch.tensor([[START_MS, START_MS]]))
    with pytest.raises(TypeError, match="integer milliseconds"):
        period_fraction(torch.tensor([1.0e12]), torch.tensor([[0, 2 * 10**12]]))
    with pytest.raises(ValueError, match=r"periods of shape \(3, 2\), got \(1, 2\)"):
        period_fraction(torch.tensor([START_MS] * 3), torch.tensor([[START_MS, START_MS + 10]]))


# --- Implicit decoder --------------------------------------------------------------------------


def test_decoder_maps_samples_and_fractions_to_bands() -> None:
    torch.manual_seed(0)
    decoder = ImplicitDecoder()
    out = decoder(_unit(10, 64), torch.rand(10))
    assert out.shape == (10, 5)
    hidden = [m for m in decoder.modules() if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in hidden] == [(80, 512), (512, 512), (512, 5)]


def test_decoder_time_code_tells_the_ends_of_a_period_apart() -> None:
    decoder = ImplicitDecoder(frequencies=8)
    code = decoder.time_code(torch.tensor([0.0, 1 - 2.0**-24, 0.5]))
    assert code.shape == (3, 16)
    assert (code[0] - code[1]).norm() > 1.9  # the slowest wave (pi s) is at opposite ends
    assert code[:, 8].tolist() == pytest.approx([1.0, -1.0, 0.0], abs=1e-6)  # cos(pi s): one-to-one


# --- Shift-invariant L1 ------------------------------------------------------------------------


def _plain_min_over_shifts(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor, m: int) -> torch.Tensor:
    """Reference: every shift's weighted L1 with autograd, minimum over shifts of images with weight."""
    h, w = pred.shape[-2:]
    inner = pred[..., m : h - m, m : w - m]
    losses = []
    for dy in range(-m, m + 1):
        for dx in range(-m, m + 1):
            t = target[..., m + dy : h - m + dy, m + dx : w - m + dx]
            wt = weight[:, None, m + dy : h - m + dy, m + dx : w - m + dx]
            losses.append((wt * (inner - t).abs()).sum((1, 2, 3)) / (pred.shape[1] * wt.sum((1, 2, 3))))
    return torch.stack(losses).min(0).values


def test_shift_invariant_l1_forgives_a_shifted_copy() -> None:
    torch.manual_seed(0)
    pred = torch.randn(2, 5, 16, 16)
    target = torch.roll(pred, shifts=(1, -2), dims=(2, 3))  # the rolled-in edge lies outside the crop
    weight = torch.ones(2, 16, 16)
    loss, weight_sum = shift_invariant_l1(pred, target, weight, max_shift=2)
    assert loss.max().item() < 1e-6
    assert weight_sum.tolist() == [144.0, 144.0]
    plain, _ = shift_invariant_l1(pred, target, weight, max_shift=0)
    assert plain.min().item() > 0.5


def test_shift_invariant_l1_divides_by_the_weight_sum() -> None:
    pred = torch.zeros(1, 2, 4, 4)
    target = torch.full((1, 2, 4, 4), 100.0)
    weight = torch.zeros(1, 4, 4)
    target[0, :, :3, 0] = 2.0
    weight[0, :3, 0] = 1.0  # three valid pixels, target 2 there; 13 invalid ones with a huge error
    loss, weight_sum = shift_invariant_l1(pred, target, weight, max_shift=0)
    assert (loss.item(), weight_sum.item()) == (2.0, 3.0)


def test_shift_invariant_l1_ignores_zero_weight_pixels() -> None:
    torch.manual_seed(1)
    pred, target = torch.randn(2, 3, 12, 12), torch.randn(2, 3, 12, 12)
    weight = (torch.rand(2, 12, 12) > 0.3).float()
    corrupted = torch.where(weight[:, None] > 0, target, torch.full_like(target, 1e6))
    torch.testing.assert_close(shift_invariant_l1(pred, corrupted, weight), shift_invariant_l1(pred, target, weight))


def test_shift_invariant_l1_gives_nothing_for_images_without_weight() -> None:
    pred, target = torch.randn(2, 3, 8, 8), torch.randn(2, 3, 8, 8)
    weight = torch.ones(2, 8, 8)
    weight[1] = 0
    loss, weight_sum = shift_invariant_l1(pred, target, weight)
    assert loss[0] > 0
    assert (loss[1].item(), weight_sum[1].item()) == (0.0, 0.0)


def test_shift_invariant_l1_matches_a_differentiable_minimum() -> None:
    """Value and gradient of the chosen shift equal those of a plain min over all shifts, per image."""
    torch.manual_seed(2)
    base = torch.randn(3, 4, 12, 12)
    target = torch.stack(
        [torch.roll(base[i], (dy, dx), (1, 2)) for i, (dy, dx) in enumerate([(0, 1), (-2, 2), (1, 0)])]
    )
    target = target + 0.1 * torch.randn_like(target)
    weight = (torch.rand(3, 12, 12) > 0.2).float()
    pred = base.clone().requires_grad_()
    loss, _ = shift_invariant_l1(pred, target, weight)
    torch.autograd.backward(loss.sum())
    reference_pred = base.clone().requires_grad_()
    reference = _plain_min_over_shifts(reference_pred, target, weight, 2)
    torch.autograd.backward(reference.sum())
    torch.testing.assert_close(loss, reference)
    torch.testing.assert_close(pred.grad, reference_pred.grad)


def test_shift_invariant_l1_refuses_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match="weight \\(B, H, W\\)"):
        shift_invariant_l1(torch.zeros(1, 2, 8, 8), torch.zeros(1, 2, 8, 8), torch.zeros(1, 2, 8, 8))
    with pytest.raises(ValueError, match="max_shift 4 must be >= 0 and leave an interior"):
        shift_invariant_l1(torch.zeros(1, 2, 8, 8), torch.zeros(1, 2, 8, 8), torch.zeros(1, 8, 8), max_shift=4)


# --- Reconstruction ----------------------------------------------------------------------------


def _affine_decoder(z: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """A decoder whose output is easy to reproduce: bands = z[:, :3] + s."""
    return z[:, :3] + s[:, None]


def test_reconstruction_loss_is_the_weighted_mean_over_present_frames() -> None:
    torch.manual_seed(3)
    z = torch.randn(2, 8, 10, 10)
    targets = torch.randn(2, 3, 3, 10, 10)
    weights = (torch.rand(2, 3, 10, 10) > 0.5).float()
    fractions = torch.rand(2, 3)
    present = torch.tensor([[True, True, False], [True, False, False]])
    loss = reconstruction_loss(_affine_decoder, z, targets, weights, fractions, present)
    numerator, denominator = 0.0, 0.0
    for b, k in [(0, 0), (0, 1), (1, 0)]:
        pred = z[b : b + 1, :3] + fractions[b, k]
        frame_loss, weight_sum = shift_invariant_l1(pred, targets[b : b + 1, k], weights[b : b + 1, k])
        numerator += (frame_loss * weight_sum).item()
        denominator += weight_sum.item()
    assert loss.item() == pytest.approx(numerator / denominator, rel=1e-6)
    # Padding frames are ignored, whatever they hold.
    targets[:, 2] = 1e6
    targets[1, 1] = 1e6
    assert reconstruction_loss(_affine_decoder, z, targets, weights, fractions, present).item() == loss.item()


def test_reconstruction_loss_trains_decoder_and_encoder() -> None:
    torch.manual_seed(4)
    decoder = ImplicitDecoder(embedding_dim=8, bands=3, hidden=16)
    z = _unit(2, 8, 6, 6, dim=1).requires_grad_()
    targets, weights = torch.randn(2, 2, 3, 6, 6), torch.ones(2, 2, 6, 6)
    loss = reconstruction_loss(decoder, z, targets, weights, torch.rand(2, 2), torch.ones(2, 2, dtype=torch.bool))
    torch.autograd.backward(loss)
    assert loss.item() > 0.1
    assert z.grad is not None
    assert z.grad.abs().sum() > 0
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in decoder.parameters())


def test_reconstruction_loss_without_valid_pixels_is_zero() -> None:
    z, targets = torch.randn(1, 8, 6, 6), torch.randn(1, 2, 3, 6, 6)
    loss = reconstruction_loss(
        _affine_decoder, z, targets, torch.zeros(1, 2, 6, 6), torch.rand(1, 2), torch.ones(1, 2, dtype=torch.bool)
    )
    assert loss.item() == 0.0


def test_reconstruction_loss_refuses_mismatched_frames() -> None:
    with pytest.raises(ValueError, match="must agree on \\(B, K\\)"):
        reconstruction_loss(
            _affine_decoder,
            torch.randn(1, 8, 6, 6),
            torch.randn(1, 2, 3, 6, 6),
            torch.ones(1, 2, 6, 6),
            torch.rand(1, 3),
            torch.ones(1, 3, dtype=torch.bool),
        )


# --- Batch uniformity --------------------------------------------------------------------------


def _constant_windows(directions: torch.Tensor, size: int = 4) -> torch.Tensor:
    """(B, D) unit vectors -> (B, D, size, size), each window one vector at every pixel."""
    return directions[:, :, None, None].expand(-1, -1, size, size).contiguous()


def test_uniformity_compares_consecutive_windows() -> None:
    directions = _unit(5, 16)
    cosines = (directions * torch.roll(directions, 1, 0)).sum(1).abs()
    expected = cosines.mean()
    # Rolling over pixels instead (the seed repo's bug) would give exactly 1 for constant windows.
    assert expected.item() < 0.5
    torch.testing.assert_close(batch_uniformity(_constant_windows(directions)), expected)


def test_uniformity_passes_gradients() -> None:
    u = _unit(4, 16, 3, 3, dim=1).requires_grad_()
    torch.autograd.backward(batch_uniformity(u))
    assert u.grad is not None
    assert u.grad.abs().sum() > 0


def test_uniformity_refuses_a_batch_of_one() -> None:
    with pytest.raises(ValueError, match="at least 2 windows to compare, got a batch of 1"):
        batch_uniformity(_unit(1, 16, 2, 2, dim=1))


LOCAL_BATCHES = (2, 4)  # uneven on purpose: the global mean counts every pixel once


def _global_batch() -> torch.Tensor:
    return _unit(sum(LOCAL_BATCHES), 8, 3, 3, seed=11, dim=1)


def _uniformity_rank(rank: int, folder: str) -> None:
    """One rank of a 2-process gloo group: its windows' uniformity and their gradient, saved."""
    dist.init_process_group("gloo", init_method=f"file://{folder}/rendezvous", rank=rank, world_size=2)
    try:
        start = sum(LOCAL_BATCHES[:rank])
        u = _global_batch()[start : start + LOCAL_BATCHES[rank]].clone().requires_grad_()
        loss = batch_uniformity(u)
        torch.autograd.backward(loss)
        torch.save({"loss": loss.detach(), "grad": u.grad}, f"{folder}/{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_uniformity_over_ranks_equals_the_global_batch(tmp_path: Path) -> None:
    spawn(_uniformity_rank, args=(str(tmp_path),), nprocs=2)  # type: ignore[no-untyped-call]
    u = _global_batch().requires_grad_()
    expected = batch_uniformity(u)
    torch.autograd.backward(expected)
    assert u.grad is not None
    grads = torch.split(u.grad, list(LOCAL_BATCHES))
    for rank in range(2):
        out = torch.load(tmp_path / f"{rank}.pt")
        torch.testing.assert_close(out["loss"], expected.detach())
        torch.testing.assert_close(out["grad"], 2 * grads[rank])  # world size x dL/du, see the docstring


# --- Consistency -------------------------------------------------------------------------------


def test_consistency_of_identical_embeddings_is_zero() -> None:
    u = _unit(2, 16, 4, 4, dim=1)
    assert abs(consistency(u, u.clone()).item()) < 1e-6


def test_consistency_of_opposite_embeddings_is_two() -> None:
    u = _unit(2, 16, 4, 4, dim=1)
    assert consistency(u, -u).item() == pytest.approx(2.0, abs=1e-6)


def test_consistency_is_a_weighted_mean() -> None:
    u = _unit(1, 16, 2, 2, dim=1)
    student = u.clone()
    student[0, :, 0, 0] *= -1  # gap 2 at one pixel, 0 at the three others
    assert consistency(u, student).item() == pytest.approx(0.5, abs=1e-6)
    weight = torch.tensor([[[1.0, 1.0], [0.0, 0.0]]])
    assert consistency(u, student, weight).item() == pytest.approx(1.0, abs=1e-6)
    assert consistency(u, student, torch.zeros(1, 2, 2)).item() == 0.0


def test_consistency_teaches_only_the_student() -> None:
    teacher = _unit(2, 16, 3, 3, seed=1, dim=1).requires_grad_()
    student = _unit(2, 16, 3, 3, seed=2, dim=1).requires_grad_()
    torch.autograd.backward(consistency(teacher, student))
    assert teacher.grad is None
    assert student.grad is not None
    torch.testing.assert_close(student.grad, -teacher.detach() / 18)


# --- Text alignment ----------------------------------------------------------------------------


def test_text_head_maps_embeddings_and_periods_to_text_space() -> None:
    head = TextHead(text_dim=32, period_code_dim=6, embedding_dim=64, hidden=16)
    assert head(_unit(5, 64), torch.randn(5, 6)).shape == (5, 32)


def test_clip_loss_prefers_aligned_pairs() -> None:
    text = _unit(16, 32, seed=4)
    predicted = text + 0.3 * _unit(16, 32, seed=5)
    aligned = clip_loss(predicted, text)
    shuffled = clip_loss(predicted, text[torch.randperm(16, generator=torch.Generator().manual_seed(0))])
    assert aligned.item() < 0.1
    assert shuffled.item() > 3.0


def test_clip_loss_of_orthonormal_pairs_has_its_closed_form() -> None:
    """Logits 1/T on the diagonal and 0 elsewhere: loss = log(1 + (N - 1) exp(-1/T))."""
    basis = torch.eye(8)
    assert clip_loss(basis, basis, temperature=0.5).item() == pytest.approx(math.log(1 + 7 * math.exp(-2.0)), rel=1e-6)


def test_clip_loss_of_a_single_pair_is_zero_and_attached() -> None:
    predicted = torch.randn(1, 8, requires_grad=True)
    loss = clip_loss(predicted, torch.randn(1, 8))
    assert loss.item() == 0.0
    torch.autograd.backward(loss)
    assert predicted.grad is not None


def test_clip_loss_refuses_mismatched_pairs() -> None:
    with pytest.raises(ValueError, match="non-empty \\(N, E\\) pairs of equal shape"):
        clip_loss(torch.randn(3, 8), torch.randn(2, 8))
