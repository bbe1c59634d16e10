"""The Space-Time-Precision (STP) encoder of AlphaEarth Foundations (arXiv 2507.22291), in PyTorch.

Shapes: B windows, T frames, C bands, L window side. Three states travel through the blocks, one
per frame at each of three resolutions:

    precision  (B*T, P, L/2,  L/2)   3x3 convolutions
    time       (B*T, Tw, L/8, L/8)   attention across frames at each location, timecode-conditioned
    space      (B*T, S, L/16, L/16)  attention across locations within a frame (ViT)

Choices the paper leaves open (documented in docs/model.md):
- The three operators of a block run on the block's input states; each adds a residual. The
  block then exchanges: every state receives the other two, resampled by a learned rescaling
  (1x1 projection + depthwise strided convolution down, 1x1 projection + depthwise transposed
  convolution up) and added ("merge by sum").
- Pre-norm transformer blocks, GELU MLPs of ratio `mlp_ratio`, head width = width / heads.
- Masking: attention over frames (time operator and the temporal summary) sees only the frames
  valid at that location plus one learned "null" key/value, so an invalid or padded frame has
  exactly no influence, and a location without any valid frame is still defined.
- The summary query is an MLP of the timecodes of the valid period's start and end, each
  frequency weighted by sqrt(period / longest period) so the summary moves smoothly with the
  period; keys are the frame features plus a projection of each frame's (unweighted) timecode.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from aef_pipeline.model.spec import ModelSpec
from aef_pipeline.model.timecode import periods_days, timecode

SOURCE = "sentinel2"


class STPEncoder(nn.Module):
    """Windows of frames -> one unit vector per pixel summarising a valid period."""

    period_weights: torch.Tensor

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.spec = spec
        p, t, s = spec.precision_width, spec.time_width, spec.space_width
        code = 2 * spec.timecode.frequencies
        # Per-source input projectors: the first downscale, L -> L/2.
        self.project = nn.ModuleDict({SOURCE: nn.Conv2d(len(spec.bands), p, kernel_size=2, stride=2)})
        self.to_time = Rescale(p, t, 4, down=True)  # L/2 -> L/8
        self.to_space = Rescale(t, s, 2, down=True)  # L/8 -> L/16
        self.blocks = nn.ModuleList(STPBlock(spec) for _ in range(spec.depth))
        # Final resample of the three states to L/2, merged by sum.
        self.final_time = Rescale(t, p, 4, down=False)
        self.final_space = Rescale(s, p, 8, down=False)
        self.summary = PeriodPooling(p, code, heads=max(1, p // 32))
        self.upsample = nn.ConvTranspose2d(p, p, kernel_size=2, stride=2)  # learned, L/2 -> L
        self.head = nn.Conv2d(p, spec.output_dim, kernel_size=1)
        # The period query sees each frequency with amplitude sqrt(period / longest period): the
        # summary of [t_s, t_e) then varies smoothly as the period slides (a day's shift moves it
        # little, half a year a lot), while frames keep their full day-resolving timecodes.
        weights = (periods_days(spec.timecode) / spec.timecode.longest_days).sqrt().to(torch.float32)
        weights = weights / weights.square().mean().sqrt()  # unit RMS: the query keeps its scale
        self.register_buffer("period_weights", torch.cat([weights, weights]), persistent=False)

    def forward(
        self, x: torch.Tensor, valid: torch.Tensor, t_ms: torch.Tensor, period_ms: torch.Tensor
    ) -> torch.Tensor:
        """x (B, T, C, L, L) normalised, zero where invalid; valid (B, T, L, L) bool; t_ms (B, T)
        int64; period_ms (B, 2) int64 [start, end). Returns (B, output_dim, L, L), unit norm."""
        b, n, c, size, _ = x.shape
        frames = x.reshape(b * n, c, size, size)
        valid_half = _any_pool(valid, 2)  # (B, T, L/2, L/2)
        valid_eighth = _any_pool(valid, 8)
        frame_code = timecode(t_ms, self.spec.timecode)  # (B, T, 2F)
        precision = self.project[SOURCE](frames)
        time = self.to_time(precision)
        space = self.to_space(time)
        for block in self.blocks:
            precision, time, space = block(precision, time, space, valid_eighth, frame_code, (b, n))
        features = precision + self.final_time(time) + self.final_space(space)
        period_code = timecode(period_ms, self.spec.timecode) * self.period_weights
        summary = self.summary(features, valid_half, frame_code, period_code, (b, n))
        out = self.head(F.gelu(self.upsample(summary)))
        return F.normalize(out, dim=1)


class STPBlock(nn.Module):
    """Space, time and precision operators side by side, then a learned exchange between them."""

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        p, t, s = spec.precision_width, spec.time_width, spec.space_width
        self.space = TransformerBlock(s, spec.space_heads, spec.mlp_ratio)
        self.time = TransformerBlock(t, spec.time_heads, spec.mlp_ratio)
        self.time_code = nn.Linear(2 * spec.timecode.frequencies, t)
        self.precision = ConvBlock(p)
        self.p_to_t, self.p_to_s = Rescale(p, t, 4, down=True), Rescale(p, s, 8, down=True)
        self.t_to_p, self.t_to_s = Rescale(t, p, 4, down=False), Rescale(t, s, 2, down=True)
        self.s_to_p, self.s_to_t = Rescale(s, p, 8, down=False), Rescale(s, t, 2, down=False)

    def forward(
        self,
        precision: torch.Tensor,
        time: torch.Tensor,
        space: torch.Tensor,
        valid: torch.Tensor,
        frame_code: torch.Tensor,
        batch: tuple[int, int],
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        space = space + self.space(_tokens(space), key_valid=None).transpose(1, 2).reshape(space.shape)
        time = time + self._time_operator(time, valid, frame_code, batch)
        precision = precision + self.precision(precision)
        return (
            precision + self.t_to_p(time) + self.s_to_p(space),
            time + self.p_to_t(precision) + self.s_to_t(space),
            space + self.p_to_s(precision) + self.t_to_s(time),
        )

    def _time_operator(
        self, time: torch.Tensor, valid: torch.Tensor, frame_code: torch.Tensor, batch: tuple[int, int]
    ) -> torch.Tensor:
        b, n = batch
        _, width, h, w = time.shape
        conditioned = time.reshape(b, n, width, h, w) + self.time_code(frame_code)[..., None, None]
        # One sequence over frames per (window, location).
        sequences = conditioned.permute(0, 3, 4, 1, 2).reshape(b * h * w, n, width)
        key_valid = valid.permute(0, 2, 3, 1).reshape(b * h * w, n)
        out: torch.Tensor = self.time(sequences, key_valid=key_valid)
        return out.reshape(b, h, w, n, width).permute(0, 3, 4, 1, 2).reshape(b * n, width, h, w)


class TransformerBlock(nn.Module):
    """Pre-norm multi-head self-attention and MLP, each residual; returns the block's increment.

    With `key_valid`, queries attend only to valid keys and a learned null key/value."""

    def __init__(self, width: int, heads: int, mlp_ratio: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.out = nn.Linear(width, width)
        self.null = nn.Parameter(torch.zeros(2, width))  # key and value always attendable
        self.mlp = nn.Sequential(nn.Linear(width, mlp_ratio * width), nn.GELU(), nn.Linear(mlp_ratio * width, width))

    def forward(self, x: torch.Tensor, key_valid: torch.Tensor | None) -> torch.Tensor:
        attended = self._attend(self.norm1(x), key_valid)
        increment: torch.Tensor = attended + self.mlp(self.norm2(x + attended))
        return increment

    def _attend(self, x: torch.Tensor, key_valid: torch.Tensor | None) -> torch.Tensor:
        n, length, width = x.shape
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        mask = None
        if key_valid is not None:
            k = torch.cat([self.null[0].expand(n, 1, width), k], dim=1)
            v = torch.cat([self.null[1].expand(n, 1, width), v], dim=1)
            always = torch.ones(n, 1, dtype=torch.bool, device=x.device)
            mask = torch.cat([always, key_valid], dim=1)[:, None, None, :]
        q, k, v = (_split_heads(z, self.heads) for z in (q, k, v))
        attended = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        out: torch.Tensor = self.out(attended.transpose(1, 2).reshape(n, length, width))
        return out


class ConvBlock(nn.Module):
    """Two 3x3 convolutions with group norm and GELU; returns the increment."""

    def __init__(self, width: int) -> None:
        super().__init__()
        groups = max(1, width // 16)
        self.body = nn.Sequential(
            nn.GroupNorm(groups, width),
            nn.GELU(),
            nn.Conv2d(width, width, 3, padding=1),
            nn.GroupNorm(groups, width),
            nn.GELU(),
            nn.Conv2d(width, width, 3, padding=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.body(x)
        return out


class Rescale(nn.Module):
    """Learned change of resolution by an integer factor: a 1x1 projection, then a depthwise strided
    convolution (down) or transposed convolution (up) whose kernel is the learned resampling."""

    def __init__(self, c_in: int, c_out: int, factor: int, down: bool) -> None:
        super().__init__()
        self.project = nn.Conv2d(c_in, c_out, kernel_size=1)
        resample = nn.Conv2d if down else nn.ConvTranspose2d
        self.resample = resample(c_out, c_out, kernel_size=factor, stride=factor, groups=c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.resample(self.project(x))
        return out


class PeriodPooling(nn.Module):
    """Attention pooling over frames at each location with one query built from the valid period."""

    def __init__(self, width: int, code: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.query = nn.Sequential(nn.Linear(2 * code, width), nn.GELU(), nn.Linear(width, width))
        self.key_code = nn.Linear(code, width)
        self.norm = nn.LayerNorm(width)
        self.key, self.value = nn.Linear(width, width), nn.Linear(width, width)
        self.null = nn.Parameter(torch.zeros(2, width))
        self.out = nn.Linear(width, width)

    def forward(
        self,
        features: torch.Tensor,
        valid: torch.Tensor,
        frame_code: torch.Tensor,
        period_code: torch.Tensor,
        batch: tuple[int, int],
    ) -> torch.Tensor:
        b, n = batch
        _, width, h, w = features.shape
        seq = self.norm(features.reshape(b, n, width, h, w).permute(0, 3, 4, 1, 2))  # (B, h, w, T, P)
        keys = self.key(seq) + self.key_code(frame_code)[:, None, None]
        values = self.value(seq)
        query = self.query(period_code.reshape(b, -1))[:, None, None, None, :].expand(b, h, w, 1, width)
        keys = torch.cat([self.null[0].expand(b, h, w, 1, width), keys], dim=3).reshape(b * h * w, n + 1, width)
        values = torch.cat([self.null[1].expand(b, h, w, 1, width), values], dim=3).reshape(b * h * w, n + 1, width)
        key_valid = valid.permute(0, 2, 3, 1).reshape(b * h * w, n)
        mask = torch.cat([torch.ones_like(key_valid[:, :1]), key_valid], dim=1)[:, None, None, :]
        q, k, v = (_split_heads(z, self.heads) for z in (query.reshape(b * h * w, 1, width), keys, values))
        pooled = _single_query_attention(q, k, v, mask).transpose(1, 2).reshape(b, h, w, width)
        out: torch.Tensor = self.out(pooled)
        return out.permute(0, 3, 1, 2)


def _single_query_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Attention of one query per sequence, written out: (N, heads, 1, d) -> (N, heads, 1, d).

    Not F.scaled_dot_product_attention: for a single query its fused CPU kernel gives the
    sequences a second thread computes a different rounding than the first thread's (measured,
    torch 2.13, 2 threads: up to 6e-8 at the output), so a window's embedding would depend on its
    place in the batch and on the thread count. Matmul and softmax compute every sequence alike;
    with one query there is nothing for a fused kernel to save.
    """
    scores = torch.matmul(q, k.transpose(-1, -2)) * (q.shape[-1] ** -0.5)
    weights = torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1)
    return torch.matmul(weights, v)


def _split_heads(z: torch.Tensor, heads: int) -> torch.Tensor:
    """(N, length, width) -> (N, heads, length, width / heads)."""
    n, length, width = z.shape
    return z.reshape(n, length, heads, width // heads).transpose(1, 2)


def _tokens(space: torch.Tensor) -> torch.Tensor:
    return space.flatten(2).transpose(1, 2)  # (N, h*w, S)


def _any_pool(valid: torch.Tensor, factor: int) -> torch.Tensor:
    """(B, T, L, L) bool -> (B, T, L/f, L/f): a cell is valid where any of its pixels is."""
    b, n, size, _ = valid.shape
    cells = valid.reshape(b, n, size // factor, factor, size // factor, factor)
    return cells.any(dim=5).any(dim=3)
