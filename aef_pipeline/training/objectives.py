"""The training objectives of AlphaEarth Foundations (arXiv 2507.22291, supplement S2.2-S2.4).

    l = a * reconstruction + b * batch uniformity + c * consistency + d * text (CLIP)

Pure functions and small modules, on whatever device their inputs live on; nothing here holds
state between calls or seeds anything. The seed repo's bugs these avoid (FIELD-NOTES section 9):
uniformity rolled over pixels instead of the batch, masked losses divided by the pixel count
instead of the weight sum, no (or far too weak) vMF noise, halved consistency.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

# Concentration of the vMF bottleneck, fixed in training (paper S2.2): on S^63 a sample's cosine
# with its mean direction is 0.996 on average, i.e. about 5 degrees of noise.
VMF_KAPPA = 8000.0

# The largest float32 below 1: period fractions are clamped to it so that float32 rounding of an
# instant 1 ms before its period's end never yields 1.0, outside the documented [0, 1).
_BELOW_ONE = 1.0 - 2.0**-24


@dataclass(frozen=True)
class LossWeights:
    """Weights of the four terms of the training loss (paper S2.4: a, b, c, d)."""

    reconstruction: float = 1.0
    """a: the implicit decoders' shift-invariant L1, per source."""
    uniformity: float = 0.05
    """b: mean |u_i . u'_i| against the batch rotated by one."""
    consistency: float = 0.02
    """c: 1 - mu . mu_s between teacher and student embeddings."""
    text: float = 0.001
    """d: CLIP loss of the text head against frozen text embeddings."""


# --- von Mises-Fisher bottleneck -------------------------------------------------------------


def bessel_ratio(kappa: float, dim: int) -> float:
    """A_D(kappa) = I_{D/2}(kappa) / I_{D/2-1}(kappa): the mean of mu . z under vMF(mu, kappa) on S^{D-1}.

    Pure Python, stable for any finite kappa > 0: the ratios r_n = I_n / I_{n-1} satisfy
    r_n = 1 / (2n / kappa + r_{n+1}) (Gauss's continued fraction), run backwards from an order far
    above D/2, started at Amos's (1974) estimate. Errors shrink by r_n^2 per step, so
    64 + 8 sqrt(kappa) steps leave them below 1e-25; at kappa 8e3 that is ~780 steps.
    """
    if dim < 2 or not (kappa > 0 and math.isfinite(kappa)):
        raise ValueError(f"bessel_ratio needs dim >= 2 and a finite kappa > 0, got dim={dim}, kappa={kappa}")
    order = dim / 2
    steps = 64 + math.ceil(8 * math.sqrt(kappa))
    top = order + steps + 1
    ratio = kappa / (top - 0.5 + math.sqrt(top * top + kappa * kappa))
    for j in range(steps, -1, -1):
        ratio = 1.0 / (2 * (order + j) / kappa + ratio)
    return ratio


def sample_vmf(mu: torch.Tensor, kappa: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Von Mises-Fisher samples around unit vectors mu (..., D): same shape and dtype as mu.

    z = w mu + sqrt(1 - w^2) v, with w drawn by Wood's (1994) rejection sampler in float64 and v a
    uniform direction orthogonal to mu (Gaussian noise projected off mu, normalised). w and the
    noise are constants, so z is a differentiable function of mu: gradients reach the encoder.

    Randomness: everything is drawn on mu's device, from `generator` (which must live on that
    device) or else from that device's default generator. A seed gives identical samples on the
    same device type; CPU and CUDA draw different streams.
    """
    dim = mu.shape[-1]
    if dim < 2 or not (kappa > 0 and math.isfinite(kappa)):
        raise ValueError(f"sample_vmf needs vectors of dimension >= 2 and a finite kappa > 0, got {dim} and {kappa}")
    w = _wood_cosines(mu.numel() // dim, dim, kappa, generator, mu.device).reshape(*mu.shape[:-1], 1)
    sine = torch.sqrt((1 - w) * (1 + w))  # in float64: 1 - w is ~4e-3 at kappa 8e3
    work = torch.promote_types(mu.dtype, torch.float32)
    mean = mu.to(work)
    noise = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=work)
    tangent = _orthogonal_unit(_orthogonal_unit(noise, mean), mean)  # twice: one pass leaves ~1e-5 of mu
    return (w.to(work) * mean + sine.to(work) * tangent).to(mu.dtype)


def _orthogonal_unit(x: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
    """x with its component along the unit vectors mean removed, normalised (over the last axis)."""
    return F.normalize(x - (x * mean).sum(-1, keepdim=True) * mean, dim=-1)


def _wood_cosines(
    n: int, dim: int, kappa: float, generator: torch.Generator | None, device: torch.device
) -> torch.Tensor:
    """n draws (float64) of w = mu . z under vMF(kappa) on S^{dim-1}: Wood (1994), vectorised.

    Every round proposes for the draws still pending and keeps those accepted, by Wood's test and
    by the two gamma samplers' own tests (independent of the rest, so they bias nothing). Measured:
    71 % at kappa 8e3 on S^63, 99 % at kappa 10, so ~1.4 n proposals over a dozen shrinking rounds."""
    m1 = dim - 1
    b = m1 / (2 * kappa + math.sqrt(4 * kappa * kappa + m1 * m1))  # stable form of (sqrt(4k^2+m1^2)-2k)/m1
    x0 = (1 - b) / (1 + b)
    c = kappa * x0 + m1 * (math.log(4 * b) - 2 * math.log1p(b))  # log(1 - x0^2) without cancellation
    w = torch.empty(n, dtype=torch.float64, device=device)
    pending = torch.arange(n, device=device)
    while pending.numel() > 0:
        (g1, ok1), (g2, ok2) = (_gamma(pending.numel(), m1 / 2, generator, device) for _ in range(2))
        beta = g1 / (g1 + g2)  # Beta(m1/2, m1/2)
        proposal = (1 - (1 + b) * beta) / (1 - (1 - b) * beta)
        u = torch.rand(pending.numel(), generator=generator, device=device, dtype=torch.float64)
        accept = ok1 & ok2 & (kappa * proposal + m1 * torch.log1p(-x0 * proposal) - c >= torch.log(u))
        w[pending[accept]] = proposal[accept]
        pending = pending[~accept]
    return w


def _gamma(
    n: int, shape: float, generator: torch.Generator | None, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """n proposals (float64) of Gamma(shape, 1) by Marsaglia and Tsang (2000), with the mask of those
    accepted (~98 %); shape < 1 is boosted: Gamma(shape + 1) U^(1/shape). Written out because
    torch's gamma sampler takes no generator."""
    d = (shape + 1 if shape < 1 else shape) - 1 / 3
    x = torch.randn(n, generator=generator, device=device, dtype=torch.float64)
    v = (1 + x / math.sqrt(9 * d)) ** 3
    u = torch.rand(n, generator=generator, device=device, dtype=torch.float64)
    accept = (v > 0) & (torch.log(u) < x * x / 2 + d - d * v + d * torch.log(v.clamp_min(1e-300)))
    value = d * v
    if shape < 1:
        value = value * torch.rand(n, generator=generator, device=device, dtype=torch.float64) ** (1 / shape)
    return value, accept


# --- Reconstruction ----------------------------------------------------------------------------


def period_fraction(t_ms: torch.Tensor, period_ms: torch.Tensor) -> torch.Tensor:
    """Where instants t_ms (...) int64 fall within their summary periods period_ms (..., 2) int64
    [start, end): float32 in [0, 1), computed in float64 from the integer milliseconds.

    An instant outside its period, or an empty period, is a bug of the caller (the targets are drawn
    from inside the period): ValueError, naming the first offending instant and period."""
    if t_ms.is_floating_point() or period_ms.is_floating_point():
        raise TypeError(f"period_fraction takes integer milliseconds, got {t_ms.dtype} and {period_ms.dtype}")
    if period_ms.shape != (*t_ms.shape, 2):
        raise ValueError(f"period_fraction needs periods of shape {(*t_ms.shape, 2)}, got {tuple(period_ms.shape)}")
    start, end = period_ms[..., 0], period_ms[..., 1]
    bad = (t_ms < start) | (t_ms >= end)
    if bool(bad.any()):
        i = tuple(int(k) for k in bad.nonzero()[0])
        raise ValueError(
            f"instant {int(t_ms[i])} ms at index {i} lies outside its summary period "
            f"[{int(start[i])}, {int(end[i])}) ms: draw targets from inside their period"
        )
    fraction = (t_ms - start).to(torch.float64) / (end - start).to(torch.float64)
    return fraction.clamp(max=_BELOW_ONE).to(torch.float32)


class ImplicitDecoder(nn.Module):
    """Per-pixel MLP: (embedding sample z, position s within the target's summary period) -> bands.

    Time code of s: [sin, cos](pi 2^k s) for k = 0 .. frequencies - 1. The slowest wave spans two
    periods, so the code is one-to-one on [0, 1) and the start and end of a period are told apart:
    s is a position within the period, not a phase of a cycle. The fastest completes a cycle every
    1/2^(frequencies - 1) of the period (under 6 days of a year at the default 8).
    """

    def __init__(
        self, embedding_dim: int = 64, bands: int = 5, hidden: int = 512, layers: int = 2, frequencies: int = 8
    ) -> None:
        super().__init__()
        self.frequencies = frequencies
        widths = [embedding_dim + 2 * frequencies] + [hidden] * layers
        body: list[nn.Module] = []
        for w_in, w_out in itertools.pairwise(widths):
            body += [nn.Linear(w_in, w_out), nn.GELU()]
        self.mlp = nn.Sequential(*body, nn.Linear(widths[-1], bands))

    def time_code(self, s: torch.Tensor) -> torch.Tensor:
        """(N,) fractions in [0, 1) -> (N, 2 * frequencies) [sin..., cos...]."""
        scales = math.pi * 2.0 ** torch.arange(self.frequencies, device=s.device, dtype=torch.float32)
        phase = s.to(torch.float32)[:, None] * scales
        return torch.cat([torch.sin(phase), torch.cos(phase)], dim=-1)

    def forward(self, z: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        """z (N, D) vMF samples, s (N,) period fractions -> (N, bands) normalised reflectances."""
        out: torch.Tensor = self.mlp(torch.cat([z, self.time_code(s).to(z.dtype)], dim=-1))
        return out


def shift_invariant_l1(
    pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor, max_shift: int = 2
) -> tuple[torch.Tensor, torch.Tensor]:
    """Weighted L1 per image, minimised over planar shifts of the target up to max_shift pixels.

    pred, target (B, C, H, W); weight (B, H, W), >= 0 (validity of the target's pixels). For each
    (dy, dx) in [-max_shift, max_shift]^2, pred's interior (border max_shift dropped) is compared with
    target[y + dy, x + dx] under weight[y + dy, x + dx]: sum w |pred - target| / (C sum w), the
    weighted mean over bands and pixels. Sentinel-2 frames are co-registered to ~1 pixel only; the
    minimum keeps misregistration from being learned as blur. Returns (loss (B,), weight sum (B,) at
    the chosen shift), float32 or wider; an image without weight at every shift gives (0, 0).

    The shift is chosen without autograd, then the loss is recomputed there: the same value and
    gradient as a differentiable minimum, without keeping (2 max_shift + 1)^2 graphs alive.
    """
    _check_shift_inputs(pred, target, weight, max_shift)
    work = torch.promote_types(pred.dtype, torch.float32)
    pred, target = pred.to(work), target.to(work)
    weight = weight.to(work)[:, None]  # (B, 1, H, W): cropped exactly like the target
    m = max_shift
    inner = pred[..., m : pred.shape[-2] - m, m : pred.shape[-1] - m]
    shifts = torch.tensor([(dy, dx) for dy in range(-m, m + 1) for dx in range(-m, m + 1)], device=pred.device)
    with torch.no_grad():
        per_shift = torch.stack(
            [_weighted_l1(inner, _crop(target, d, m), _crop(weight, d, m)) for d in shifts.tolist()]
        )
        losses, sums = per_shift.unbind(1)  # (S, B) each
        best = torch.where(sums > 0, losses, torch.inf).argmin(dim=0)
    chosen = shifts[best]  # (B, 2)
    loss, weight_sum = _weighted_l1(inner, _crop_each(target, chosen, m), _crop_each(weight, chosen, m)).unbind(0)
    return loss, weight_sum


def _check_shift_inputs(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor, max_shift: int) -> None:
    if pred.dim() != 4 or pred.shape != target.shape or weight.shape != (pred.shape[0], *pred.shape[2:]):
        raise ValueError(
            f"shift_invariant_l1 needs pred, target (B, C, H, W) and weight (B, H, W), got "
            f"{tuple(pred.shape)}, {tuple(target.shape)}, {tuple(weight.shape)}"
        )
    if max_shift < 0 or min(pred.shape[-2:]) <= 2 * max_shift:
        raise ValueError(f"max_shift {max_shift} must be >= 0 and leave an interior of {tuple(pred.shape[-2:])}")


def _crop(x: torch.Tensor, shift: list[int], m: int) -> torch.Tensor:
    """x (B, C, H, W) -> the interior window moved by shift (dy, dx): (B, C, H - 2m, W - 2m)."""
    dy, dx = shift
    return x[..., m + dy : x.shape[-2] - m + dy, m + dx : x.shape[-1] - m + dx]


def _crop_each(x: torch.Tensor, shifts: torch.Tensor, m: int) -> torch.Tensor:
    """Like _crop with one shift per image, shifts (B, 2): (B, C, H - 2m, W - 2m)."""
    b, _, h, w = x.shape
    rows = (m + shifts[:, 0, None]) + torch.arange(h - 2 * m, device=x.device)  # (B, h')
    cols = (m + shifts[:, 1, None]) + torch.arange(w - 2 * m, device=x.device)  # (B, w')
    images = torch.arange(b, device=x.device)[:, None, None]
    return x[images, :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)  # advanced dims come first


def _weighted_l1(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """pred, target (B, C, h, w), weight (B, 1, h, w) -> stacked (loss (B,), weight sum (B,)).

    Divides by the weight sum (not the pixel count): a cloudy frame's loss is the mean over its clear
    pixels. Zero weight gives 0 / tiny = 0."""
    total = (weight * (pred - target).abs()).sum(dim=(1, 2, 3))
    weight_sum = weight.sum(dim=(1, 2, 3))
    loss = total / (pred.shape[1] * weight_sum.clamp_min(torch.finfo(weight_sum.dtype).tiny))
    return torch.stack([loss, weight_sum])


def reconstruction_loss(
    decoder: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    z: torch.Tensor,
    targets: torch.Tensor,
    weights: torch.Tensor,
    fractions: torch.Tensor,
    present: torch.Tensor,
    max_shift: int = 2,
) -> torch.Tensor:
    """Decode K held-out frames per window from its vMF sample and score them (paper S2.2, one source).

    z (B, D, H, W) vMF samples; targets (B, K, C, H, W) normalised held-out frames; weights
    (B, K, H, W) their pixel validity; fractions (B, K) their period_fraction; present (B, K) bool,
    False for padding. Every frame is decoded at every pixel and scored by shift_invariant_l1; the
    result is the mean over frames weighted by their weight sums, i.e. the weighted mean over all
    valid target pixels (0 when there are none). Loops over K to bound the decoder's activations.
    """
    b, d, h, w = z.shape
    if targets.shape[:2] != fractions.shape or present.shape != fractions.shape or fractions.shape[0] != b:
        raise ValueError(
            f"reconstruction_loss: targets {tuple(targets.shape)}, fractions {tuple(fractions.shape)} and "
            f"present {tuple(present.shape)} must agree on (B, K) with z {tuple(z.shape)}"
        )
    pixels = z.permute(0, 2, 3, 1).reshape(b * h * w, d)
    total = z.new_zeros((), dtype=torch.promote_types(z.dtype, torch.float32))
    weight_total = torch.zeros_like(total)
    for k in range(fractions.shape[1]):
        s = fractions[:, k].repeat_interleave(h * w)
        pred = decoder(pixels, s).reshape(b, h, w, -1).permute(0, 3, 1, 2)
        frame_weight = weights[:, k] * present[:, k, None, None]
        loss, weight_sum = shift_invariant_l1(pred, targets[:, k], frame_weight, max_shift)
        total = total + (loss * weight_sum).sum()
        weight_total = weight_total + weight_sum.sum()
    return total / weight_total.clamp_min(torch.finfo(weight_total.dtype).tiny)


# --- Batch uniformity --------------------------------------------------------------------------


def batch_uniformity(u: torch.Tensor) -> torch.Tensor:
    """Mean over windows and pixels of |u_i . u_{i-1}|, u (B, D, H, W) unit embeddings: low when
    embeddings of different windows spread over the sphere instead of collapsing (paper S2.3).

    The partner of window i is window i - 1 of the batch rotated by one along the batch axis
    (torch.roll(u, 1, 0)); pixel i is compared with pixel i of the other window.

    Under torch.distributed (initialised, world size > 1) the rotation runs over the global batch
    (rank order), and every rank returns the same global mean. Only each rank's last window
    travels: it is the partner of the next rank's first. As with every differentiable collective,
    the backward sums over ranks, so u.grad is world_size x dL/du; DDP's averaging of parameter
    gradients divides that back, which makes the parameters' gradient exactly that of the global mean.
    """
    if _world_size() > 1:
        return _global_uniformity(u)
    if u.shape[0] < 2:
        raise ValueError(f"batch_uniformity needs at least 2 windows to compare, got a batch of {u.shape[0]}")
    return _abs_cosine(u, torch.roll(u, 1, dims=0)).mean()


def _abs_cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """|a . b| over the channel axis: (B, D, H, W) -> (B, H, W)."""
    return (a * b).sum(dim=1).abs()


def _world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _global_uniformity(u: torch.Tensor) -> torch.Tensor:
    rank, world = dist.get_rank(), dist.get_world_size()
    # All ranks' last windows, as an all-reduced sum of a stack holding only this rank's slot: one
    # differentiable collective for both the exchange and the mean below.
    slots = torch.zeros((world, *u.shape[1:]), dtype=u.dtype, device=u.device)
    lasts = _all_reduce_sum(slots.index_copy(0, torch.tensor([rank], device=u.device), u[-1:]))
    previous = torch.cat([lasts[(rank - 1) % world][None], u[:-1]])
    terms = _abs_cosine(u, previous)
    count = torch.tensor(float(terms.numel()), dtype=terms.dtype, device=terms.device)
    total, n = _all_reduce_sum(torch.stack([terms.sum(), count])).unbind(0)
    return total / n


class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks whose backward is the sum over ranks of the gradients. Written here rather than
    torch.distributed.nn.functional (deprecated in torch 2.13) or _functional_collectives (private,
    differentiable only in recent releases); all_reduce works on every backend, gloo included."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        out = x.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        out = grad.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(out)
        return out


def _all_reduce_sum(x: torch.Tensor) -> torch.Tensor:
    return cast(torch.Tensor, _AllReduceSum.apply(x))  # type: ignore[no-untyped-call]


# --- Teacher-student consistency ---------------------------------------------------------------


def consistency(teacher: torch.Tensor, student: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over pixels of 1 - mu . mu_s, teacher and student (B, D, H, W) unit embeddings of the same
    windows and valid period; weight (B, H, W) makes it a weighted mean (0 if all weights are 0).

    The teacher is detached: it saw the full input, the student a perturbed one (dropped frames,
    dropped half-years), so the student learns to reach the teacher's answer. A gradient into the
    teacher would pull the better-informed embedding towards the degraded one instead."""
    gap = 1 - (teacher.detach() * student).sum(dim=1)  # (B, H, W), in [0, 2]
    if weight is None:
        return gap.mean()
    weight = weight.to(gap.dtype)
    return (weight * gap).sum() / weight.sum().clamp_min(torch.finfo(gap.dtype).tiny)


# --- Text alignment ----------------------------------------------------------------------------


class TextHead(nn.Module):
    """MLP from (embedding (N, D), summary period code (N, period_code_dim)) to the space of a frozen
    text model (N, text_dim), for the CLIP loss (paper S2.4: Wikipedia and GBIF text)."""

    def __init__(self, text_dim: int, period_code_dim: int, *, embedding_dim: int = 64, hidden: int = 256) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(embedding_dim + period_code_dim, hidden),
            nn.GELU(),
            nn.Linear(hidden, hidden),
            nn.GELU(),
            nn.Linear(hidden, text_dim),
        )

    def forward(self, embedding: torch.Tensor, period_code: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.mlp(torch.cat([embedding, period_code.to(embedding.dtype)], dim=-1))
        return out


def clip_loss(predicted: torch.Tensor, text: torch.Tensor, temperature: float = 0.07) -> torch.Tensor:
    """Symmetric InfoNCE between predicted (N, E) and text (N, E) embeddings, pairs on the same row:
    cross-entropy over the cosine-similarity matrix / temperature, rows and columns, averaged.

    Negatives are the other rows of this rank's batch (no gather under DDP: the term weighs 0.001 and
    the text pairs are sparse). N = 1 has no negatives and gives exactly 0, still attached to the graph."""
    if predicted.shape[0] == 0 or predicted.shape != text.shape:
        raise ValueError(
            f"clip_loss needs non-empty (N, E) pairs of equal shape, got {tuple(predicted.shape)}, {tuple(text.shape)}"
        )
    logits = F.normalize(predicted, dim=-1) @ F.normalize(text, dim=-1).T / temperature
    labels = torch.arange(logits.shape[0], device=logits.device)
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
