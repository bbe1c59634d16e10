"""The Space-Time-Precision (STP) encoder of AlphaEarth Foundations (arXiv 2507.22291), in PyTorch.

Shapes: B windows, T frames, C bands, L window side. Three states travel through the blocks, one
per frame at each of three resolutions:

    precision  (B*T, P, L/2,  L/2)   3x3 convolutions
    time       (B*T, Tw, L/8, L/8)   attention across frames at each location, timecode-conditioned
    space      (B*T, S, L/16, L/16)  attention across locations within a frame (ViT)

Choices the paper leaves open (documented in docs/model.md):
- The three operators of a block run on the block's input states; each adds a residual. The
  block then exchanges: every state receives the other two, each normalised per location,
  resampled by a learned rescaling (1x1 projection + depthwise strided convolution down, 1x1
  projection + depthwise transposed convolution up) and scaled by a learned per-channel gain,
  and added ("merge by sum").
- Pre-norm transformer blocks, GELU MLPs of ratio `mlp_ratio`, head width = width / heads. The
  space operator adds a learned relative position bias per head (Swin), so its attention knows
  where tokens lie relative to each other, the same in every window.
- Masking: attention over frames (time operator and the temporal summary) sees only the frames
  valid at that location plus one learned "null" key/value, so an invalid or padded frame has
  exactly no influence, and a location without any valid frame is still defined.
- The summary query is an MLP of the timecodes of the valid period's start and end, each
  frequency weighted by sqrt(period / longest period) so the summary moves smoothly with the
  period; keys are the frame features plus a projection of each frame's (unweighted) timecode.
- The forward pass splits in two: `features` (the blocks, once per set of frames) and
  `summarise` (the pooling for one valid period), so training can pool one view for many periods.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from aef_pipeline.model.spec import COARSEST_FACTOR, ModelSpec
from aef_pipeline.model.timecode import periods_days, timecode

SOURCE = "sentinel2"
# Initial gain of every exchange increment (LayerScale: per channel, learned). Measured on `paper`
# (L = 128, depth 15, seed 0, smooth inputs; docs/model.md): raw exchanges grew the states ~1.27x
# per block to RMS 63; with normalised sources growth is additive, to RMS 6.1 at gain 1 and 4.3
# at 0.5, and below 0.5 the operators' own increments dominate (3.6 at 0.2). 0.5 starts the
# exchanges half as strong as an operator's increment, so every state still hears the other two.
EXCHANGE_GAIN = 0.5

States = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class EncoderFeatures:
    """The blocks' output for one set of frames: all that `summarise` needs, so a view's features
    can be computed once and pooled for as many valid periods as wanted."""

    maps: torch.Tensor
    """(B*T, P, L/2, L/2): one feature map per frame."""
    valid: torch.Tensor
    """(B, T, L/2, L/2) bool: a cell is valid where any of its pixels is."""
    frame_code: torch.Tensor
    """(B, T, 2F): the frames' timecodes."""
    batch: tuple[int, int]
    """(B, T)."""


class STPEncoder(nn.Module):
    """Windows of frames -> one unit vector per pixel summarising a valid period."""

    period_weights: torch.Tensor
    checkpointing: bool
    """In training mode, recompute each block's activations during backward instead of keeping
    them (activation checkpointing): memory for `paper` at the cost of a second forward."""

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.spec = spec
        self.checkpointing = False
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
        self.upsample = Upsample2x(p)  # L/2 -> L
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
        return self.summarise(self.features(x, valid, t_ms), period_ms)

    def features(self, x: torch.Tensor, valid: torch.Tensor, t_ms: torch.Tensor) -> EncoderFeatures:
        """The blocks over every frame (x, valid, t_ms as in `forward`): one feature map per frame."""
        b, n, c, size, _ = x.shape
        frame_code = timecode(t_ms, self.spec.timecode)  # (B, T, 2F)
        precision = self.project[SOURCE](x.reshape(b * n, c, size, size))
        time = self.to_time(precision)
        states = (precision, time, self.to_space(time))
        valid_eighth = _any_pool(valid, 8)
        for block in self.blocks:
            states = self._block(block, states, valid_eighth, frame_code, (b, n))
        precision, time, space = states
        maps = precision + self.final_time(time) + self.final_space(space)
        return EncoderFeatures(maps, _any_pool(valid, 2), frame_code, (b, n))

    def summarise(self, features: EncoderFeatures, period_ms: torch.Tensor) -> torch.Tensor:
        """Pool the frames' features for the valid period period_ms (B, 2) int64 [start, end):
        (B, output_dim, L, L) unit vectors."""
        period_code = timecode(period_ms, self.spec.timecode) * self.period_weights
        summary = self.summary(features.maps, features.valid, features.frame_code, period_code, features.batch)
        out = self.head(F.gelu(self.upsample(summary)))
        return F.normalize(out, dim=1)

    def _block(
        self, block: nn.Module, states: States, valid: torch.Tensor, frame_code: torch.Tensor, batch: tuple[int, int]
    ) -> States:
        if self.checkpointing and self.training:
            # Non-reentrant, as torch recommends: unlike the reentrant variant it works with
            # torch.autograd.grad and with inputs that need no gradient (valid, frame_code).
            recomputed: States = checkpoint(block, *states, valid, frame_code, batch, use_reentrant=False)
            return recomputed
        computed: States = block(*states, valid, frame_code, batch)
        return computed


class STPBlock(nn.Module):
    """Space, time and precision operators side by side, then a learned exchange between them."""

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        p, t, s = spec.precision_width, spec.time_width, spec.space_width
        tokens = spec.window // COARSEST_FACTOR
        self.space = TransformerBlock(s, spec.space_heads, spec.mlp_ratio, grid=(tokens, tokens))
        self.time = TransformerBlock(t, spec.time_heads, spec.mlp_ratio, masked=True)
        self.time_code = WindowLinear(2 * spec.timecode.frequencies, t)
        self.precision = ConvBlock(p)
        self.p_to_t = Rescale(p, t, 4, down=True, gain=EXCHANGE_GAIN)
        self.p_to_s = Rescale(p, s, 8, down=True, gain=EXCHANGE_GAIN)
        self.t_to_p = Rescale(t, p, 4, down=False, gain=EXCHANGE_GAIN)
        self.t_to_s = Rescale(t, s, 2, down=True, gain=EXCHANGE_GAIN)
        self.s_to_p = Rescale(s, p, 8, down=False, gain=EXCHANGE_GAIN)
        self.s_to_t = Rescale(s, t, 2, down=False, gain=EXCHANGE_GAIN)

    def forward(
        self,
        precision: torch.Tensor,
        time: torch.Tensor,
        space: torch.Tensor,
        valid: torch.Tensor,
        frame_code: torch.Tensor,
        batch: tuple[int, int],
    ) -> States:
        space = space + self.space(_tokens(space), key_valid=None, windows=batch[0]).transpose(1, 2).reshape(
            space.shape
        )
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
        out: torch.Tensor = self.time(sequences, key_valid=key_valid, windows=b)
        return out.reshape(b, h, w, n, width).permute(0, 3, 4, 1, 2).reshape(b * n, width, h, w)


class WindowLinear(nn.Linear):
    """nn.Linear over an input whose first dimension is the window (B, ..., in): each window's rows
    are multiplied as a matrix of their own (a batched product, the weight shared), so a row's
    result does not depend on where its window sits in the batch.

    One product over all rows of a batch does not promise that: BLAS kernels block the rows, and
    rows in another block or in the tail get another summation order. Measured with torch 2.13's
    MKL on its AVX2 kernels (an Intel AVX-512 CPU, MKL_ENABLE_INSTRUCTIONS=AVX2): a 1,024 x 32
    input times a 32 x 32 weight computed rows 942-943 and 1,022-1,023 differently from the same
    rows elsewhere, so a window's embedding moved by 2e-7 with its place in the batch; the native
    AVX-512 kernels and AMD's AVX2 did not show it. The parameters are nn.Linear's (same names,
    same initialisation), so weights files are unchanged.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        windows, width = x.shape[0], x.shape[-1]
        rows = x.reshape(windows, -1, width)
        weight = self.weight.t().expand(windows, width, self.out_features)
        out = torch.bmm(rows, weight) if self.bias is None else torch.baddbmm(self.bias, rows, weight)
        return out.reshape(*x.shape[:-1], self.out_features)


class TransformerBlock(nn.Module):
    """Pre-norm multi-head self-attention and MLP, each residual; returns the block's increment.

    `masked`: forward takes `key_valid`, and queries attend only to valid keys and a learned null
    key/value. `grid` (h, w): the sequence is the tokens of an h x w grid in row-major order, and
    attention adds a learned bias per head for each offset (dy, dx) between query and key (Swin's
    relative position bias, a table of (2h-1)(2w-1) entries per head). Attention over a window's
    tokens is otherwise blind to where they are; with the bias it depends on relative offsets
    only, so it is the same in every window and shifts with the content inside one."""

    position_index: torch.Tensor | None

    def __init__(
        self, width: int, heads: int, mlp_ratio: int, *, masked: bool = False, grid: tuple[int, int] | None = None
    ) -> None:
        super().__init__()
        assert not (masked and grid), "a position bias with masked keys (and a null key) is not implemented"
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.qkv = WindowLinear(width, 3 * width)
        self.out = WindowLinear(width, width)
        # Key and value always attendable; only where keys are masked (an unused parameter would
        # never get a gradient, which distributed data parallel training refuses).
        self.null = nn.Parameter(torch.zeros(2, width)) if masked else None
        self.mlp = nn.Sequential(
            WindowLinear(width, mlp_ratio * width), nn.GELU(), WindowLinear(mlp_ratio * width, width)
        )
        self.position_bias = None
        self.register_buffer("position_index", None, persistent=False)
        if grid:
            self.position_bias = nn.Parameter(torch.zeros((2 * grid[0] - 1) * (2 * grid[1] - 1), heads))
            self.position_index = relative_position_index(grid)  # derived from the grid: not saved

    def forward(self, x: torch.Tensor, key_valid: torch.Tensor | None, windows: int) -> torch.Tensor:
        """x (N, length, width): N sequences, those of each of `windows` windows one after another."""
        attended = self._attend(self.norm1(x), key_valid, windows)
        increment: torch.Tensor = attended + self.mlp(
            self.norm2(x + attended).reshape(windows, -1, x.shape[-1])
        ).reshape(x.shape)
        return increment

    def _attend(self, x: torch.Tensor, key_valid: torch.Tensor | None, windows: int) -> torch.Tensor:
        n, length, width = x.shape
        q, k, v = self.qkv(x.reshape(windows, -1, width)).reshape(n, length, 3 * width).chunk(3, dim=-1)
        mask = None
        if key_valid is not None:
            assert self.null is not None, "key_valid given to an unmasked TransformerBlock"
            k = torch.cat([self.null[0].expand(n, 1, width), k], dim=1)
            v = torch.cat([self.null[1].expand(n, 1, width), v], dim=1)
            always = torch.ones(n, 1, dtype=torch.bool, device=x.device)
            mask = torch.cat([always, key_valid], dim=1)[:, None, None, :]
        q, k, v = (_split_heads(z, self.heads) for z in (q, k, v))
        bias = self._attention_bias(q.dtype)
        attended = F.scaled_dot_product_attention(q, k, v, attn_mask=mask if bias is None else bias)
        out: torch.Tensor = self.out(attended.transpose(1, 2).reshape(windows, -1, width))
        return out.reshape(n, length, width)

    def _attention_bias(self, dtype: torch.dtype) -> torch.Tensor | None:
        """(heads, h*w, h*w): what each query adds to its score for each key, or None without a grid."""
        if self.position_bias is None or self.position_index is None:
            return None
        # Contiguous: SDPA's fused CUDA kernels need a mask whose last dimension has stride 1.
        return self.position_bias[self.position_index].permute(2, 0, 1).to(dtype).contiguous()

    def initial_constants(self) -> dict[str, float]:
        # Zero: an untrained model attends as if the bias were not there.
        return {} if self.position_bias is None else {"position_bias": 0.0}


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
    convolution (down) or transposed convolution (up) whose kernel is the learned resampling.

    With `gain` (the exchanges between states), the source is first normalised per location and
    the result scaled by a learned per-channel gain starting at `gain`: a state then receives
    increments of a bounded size whatever the scale its source has grown to."""

    def __init__(self, c_in: int, c_out: int, factor: int, down: bool, gain: float | None = None) -> None:
        super().__init__()
        self.down = down
        self.norm = None if gain is None else ChannelNorm(c_in)
        self.project = nn.Conv2d(c_in, c_out, kernel_size=1)
        resample = nn.Conv2d if down else nn.ConvTranspose2d
        self.resample = resample(c_out, c_out, kernel_size=factor, stride=factor, groups=c_out)
        self.initial_gain = gain
        self.gain = None if gain is None else nn.Parameter(torch.full((c_out,), gain))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        source = x if self.norm is None else self.norm(x)
        projected = self.project(source)
        if not self.down:
            return depthwise_upsample(projected, self.resample.weight, self.resample.bias, self.gain)
        out: torch.Tensor = self.resample(projected)
        # In the increment's dtype: under autocast a float32 gain would turn the states float32.
        return out if self.gain is None else out * self.gain.to(out.dtype)[:, None, None]

    def initial_constants(self) -> dict[str, float]:
        # Up: a constant kernel is nearest-neighbour upsampling. A random one gives each pixel of a
        # factor x factor block its own weight, which stamps a lattice on untrained fields.
        constants = {} if self.down else {"resample.weight": 1.0}
        if self.initial_gain is not None:
            constants["gain"] = self.initial_gain
        return constants


def depthwise_upsample(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, gain: torch.Tensor | None = None
) -> torch.Tensor:
    """ConvTranspose2d(c, c, k, stride=k, groups=c) of x (N, C, H, W) with `weight` (C, 1, k, k)
    and `bias` (C,), times a per-channel `gain`, as one broadcast multiply-add.

    With kernel = stride every output pixel is one input pixel times one kernel weight, plus the
    bias. cuDNN runs the grouped transposed convolution as a direct kernel that took 28 % of an
    H200's time in a `paper` forward pass (docs/performance.md, GPU); this is one elementwise
    pass that writes the output once. In x's dtype, as autocast would run the convolution."""
    n, c, h, w = x.shape
    k = weight.shape[-1]
    scale = weight.to(x.dtype).reshape(1, c, 1, k, 1, k)
    shift = torch.zeros(c, dtype=x.dtype, device=x.device) if bias is None else bias.to(x.dtype)
    if gain is not None:
        scale = scale * gain.to(x.dtype).reshape(1, c, 1, 1, 1, 1)
        shift = shift * gain.to(x.dtype)
    out = torch.addcmul(shift.reshape(1, c, 1, 1, 1, 1), x[:, :, :, None, :, None], scale)
    return out.reshape(n, c, h * k, w * k)


class ChannelNorm(nn.Module):
    """LayerNorm over the channels at each location of (N, C, H, W), statistics in float32, the
    result in the input's dtype. Per location, unlike GroupNorm: a location's scale does not
    depend on the rest of the frame (masked pixels included), as in the token operators'
    LayerNorms."""

    def __init__(self, width: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(width))
        self.bias = nn.Parameter(torch.zeros(width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = x.float()  # bf16 statistics over 1024 channels would be coarse
        mean = z.mean(dim=1, keepdim=True)
        centred = z - mean
        scaled = centred * torch.rsqrt(centred.square().mean(dim=1, keepdim=True) + self.eps)
        return (scaled * self.weight[:, None, None] + self.bias[:, None, None]).to(x.dtype)


class Upsample2x(nn.Module):
    """L/2 -> L: bilinear doubling, then a learned 3x3 convolution. Every output pixel is computed
    alike, so an untrained field has no 2 px lattice (a transposed convolution with kernel =
    stride = 2 gives each pixel of a 2 x 2 block its own weights)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(width, width, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.conv(F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False))
        return out


class PeriodPooling(nn.Module):
    """Attention pooling over frames at each location with one query built from the valid period."""

    def __init__(self, width: int, code: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.query = nn.Sequential(WindowLinear(2 * code, width), nn.GELU(), WindowLinear(width, width))
        self.key_code = WindowLinear(code, width)
        self.norm = nn.LayerNorm(width)
        self.key, self.value = WindowLinear(width, width), WindowLinear(width, width)
        self.null = nn.Parameter(torch.zeros(2, width))
        self.out = WindowLinear(width, width)

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


def initial_constants(model: nn.Module) -> dict[str, float]:
    """The parameters that start at a constant rather than a random draw, by qualified name:
    nearest-neighbour up-resampling kernels, zero position biases, exchange gains
    (`weights.initialise` fills them)."""
    constants: dict[str, float] = {}
    for prefix, module in model.named_modules():
        if isinstance(module, Rescale | TransformerBlock):
            constants.update({f"{prefix}.{name}": value for name, value in module.initial_constants().items()})
    return constants


def relative_position_index(grid: tuple[int, int]) -> torch.Tensor:
    """(h*w, h*w) int64: for each query and key token of an h x w grid (row-major), the row of
    the offset (dy, dx) = query - key in a table of (2h-1)(2w-1) offsets, dy-major."""
    h, w = grid
    rows, cols = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    rows, cols = rows.flatten(), cols.flatten()
    dy = rows[:, None] - rows[None, :] + (h - 1)  # shifted to start at 0
    dx = cols[:, None] - cols[None, :] + (w - 1)
    return dy * (2 * w - 1) + dx


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
