"""The STP encoder: unit vectors, masking, frame order, continuous time, split invariance, bad input."""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr
from odc.geo.xr import xr_coords

from aef_pipeline.encode import (
    DeviceFallbackWarning,
    EncodeOptions,
    encode_cube,
    required_halo,
    resolve_device,
    seam_ratio,
)
from aef_pipeline.errors import UserInputError
from aef_pipeline.grid import TileId
from aef_pipeline.model import (
    CheckpointError,
    STPEncoder,
    TrainingRecord,
    build_model,
    load_spec,
    parameter_count,
    provenance_of,
    save_weights,
)
from aef_pipeline.model.flops import flops_per_window
from aef_pipeline.model.spec import WeightsSpec
from aef_pipeline.model.stp import (
    EXCHANGE_GAIN,
    Rescale,
    TransformerBlock,
    depthwise_upsample,
    relative_position_index,
)
from aef_pipeline.model.timecode import timecode, to_ms
from aef_pipeline.plan import Period
from aef_pipeline.preprocess import MaskPolicy, mask_policy
from aef_pipeline.sentinel2 import SCL_NODATA

SPEC = load_spec("tiny")
DAY_MS = 86_400_000
T0 = to_ms(dt.datetime(2021, 1, 5, 10, 30, tzinfo=dt.UTC))
TILE = TileId(33, "N", 26, 266)
PROVENANCE = build_model(SPEC)[1]


@pytest.fixture(scope="module")
def model() -> STPEncoder:
    return build_model(SPEC)[0]


def _inputs(frames: int = 12, seed: int = 1) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    size = SPEC.window
    valid = torch.rand(1, frames, size, size, generator=g) > 0.3
    x = torch.randn(1, frames, len(SPEC.bands), size, size, generator=g) * valid[:, :, None]
    t = torch.tensor([[T0 + DAY_MS * 29 * i + 3_600_000 * i for i in range(frames)]])
    period = torch.tensor(
        [[to_ms(dt.datetime(2021, 1, 1, tzinfo=dt.UTC)), to_ms(dt.datetime(2022, 1, 1, tzinfo=dt.UTC))]]
    )
    return x, valid, t, period


def _run(
    model: STPEncoder, x: torch.Tensor, valid: torch.Tensor, t: torch.Tensor, period: torch.Tensor
) -> torch.Tensor:
    with torch.inference_mode():
        out: torch.Tensor = model(x, valid, t, period)
    return out


def test_output_is_unit_vectors_per_pixel(model: STPEncoder) -> None:
    out = _run(model, *_inputs())
    assert out.shape == (1, 64, SPEC.window, SPEC.window)
    assert torch.allclose(out.norm(dim=1), torch.ones(()), atol=1e-5)


def test_a_masked_frame_equals_a_dropped_frame_and_order_does_not_matter(model: STPEncoder) -> None:
    x, valid, t, period = _inputs()
    valid[:, 4] = False
    x[:, 4] = 5.0  # whatever a masked frame holds must not matter
    full = _run(model, x, valid, t, period)
    keep = [i for i in range(x.shape[1]) if i != 4]
    dropped = _run(model, x[:, keep], valid[:, keep], t[:, keep], period)
    assert (full - dropped).abs().max() <= 1e-6
    order = torch.randperm(x.shape[1], generator=torch.Generator().manual_seed(3))
    shuffled = _run(model, x[:, order], valid[:, order], t[:, order], period)
    assert (full - shuffled).abs().max() <= 1e-6


def test_the_valid_period_steers_the_summary_smoothly(model: STPEncoder) -> None:
    x, valid, t, period = _inputs()
    base = _run(model, x, valid, t, period)

    def change(days: int) -> float:
        other = _run(model, x, valid, t, period + days * DAY_MS)
        return float((1 - (base * other).sum(dim=1)).mean())

    one_day, half_year = change(1), change(182)
    assert half_year > 1e-3  # different periods, different embeddings
    assert one_day < half_year / 20


def test_timecodes_resolve_a_day_decades_from_the_epoch() -> None:
    times = torch.tensor([to_ms(dt.datetime(2047, 3, 1, tzinfo=dt.UTC)) + k * DAY_MS for k in range(2)])
    codes = timecode(times, SPEC.timecode)
    assert codes.dtype == torch.float32
    assert (codes[0] - codes[1]).abs().max() > 0.5  # the ~2-day sinusoid flips sign
    # Exact to float32 rounding against the same formula in Python's float64, 47 years from 2000.
    days = (int(times[0]) - to_ms(dt.datetime(2000, 1, 1, tzinfo=dt.UTC))) / DAY_MS
    periods = np.geomspace(SPEC.timecode.shortest_days, SPEC.timecode.longest_days, SPEC.timecode.frequencies)
    expected = np.concatenate([np.sin(2 * np.pi * days / periods), np.cos(2 * np.pi * days / periods)])
    np.testing.assert_allclose(codes[0].numpy(), expected, atol=1e-6)


def test_initialisation_is_deterministic_and_seeded() -> None:
    a, provenance = build_model(SPEC)
    b, _ = build_model(SPEC)
    c, _ = build_model(dataclasses.replace(SPEC, weights=WeightsSpec("", "", seed=1)))
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values(), strict=True))
    assert not all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), c.state_dict().values(), strict=True))
    assert not provenance.trained
    assert provenance.description == "untrained: deterministic initialisation from seed 0"


def test_checkpoints_load_strictly_and_check_their_hash(tmp_path: Path, model: STPEncoder) -> None:
    path = tmp_path / "tiny.safetensors"
    digest = save_weights(model, path)
    spec = dataclasses.replace(SPEC, weights=WeightsSpec(path.name, digest, seed=0), path=tmp_path / "tiny.toml")
    loaded, provenance = build_model(spec)
    assert provenance.trained
    assert digest in provenance.description
    assert torch.equal(_run(loaded, *_inputs()), _run(model, *_inputs()))
    with pytest.raises(CheckpointError, match=r"have sha256 [0-9a-f]{64}, the spec expects 0{64}: refusing"):
        build_model(dataclasses.replace(spec, weights=WeightsSpec(path.name, "0" * 64, seed=0)))
    other = dataclasses.replace(SPEC, depth=3)
    with pytest.raises(CheckpointError, match=r"do not fit the spec \(missing: blocks\.2\."):
        build_model(dataclasses.replace(other, weights=WeightsSpec(path.name, digest, seed=0), path=spec.path))


def test_spec_sizes_and_flops() -> None:
    tiny_model, _ = build_model(SPEC)
    assert parameter_count(tiny_model) < 3_000_000
    paper = load_spec("paper")
    widths = (paper.space_width, paper.time_width, paper.precision_width)
    assert (paper.depth, widths, paper.window) == (15, (1024, 512, 128), 128)
    assert paper.core == 96
    small, large = flops_per_window(SPEC, 10), flops_per_window(SPEC, 20)
    assert 1.8 < large / small < 2.1  # almost linear in frames: time attention is the quadratic part


def test_unknown_spec_lists_the_known_ones() -> None:
    with pytest.raises(UserInputError, match=r"model spec 'huge' not found .*known specs: paper, tiny"):
        load_spec("huge")


def _variant(tmp_path: Path, old: str, new: str, extra: str = "") -> Path:
    """models/tiny.toml with `old` replaced by `new` and `extra` appended, written to tmp_path."""
    text = (Path(__file__).parents[1] / "models" / "tiny.toml").read_text()
    assert old in text
    path = tmp_path / "variant.toml"
    path.write_text(text.replace(old, new) + extra)
    return path


def test_specs_say_whether_clouds_are_masked(tmp_path: Path) -> None:
    assert SPEC.mask_clouds
    assert load_spec("paper").mask_clouds
    assert mask_policy(True) == MaskPolicy()
    assert mask_policy(False).invalid_scl == {SCL_NODATA}  # the paper's inference: clouds are seen
    assert not load_spec(_variant(tmp_path, "mask_clouds = true", "mask_clouds = false")).mask_clouds
    text = (Path(__file__).parents[1] / "models" / "tiny.toml").read_text()
    older = text[: text.index("[input]")] + text[text.index("[widths]") :]  # written before the setting
    (tmp_path / "older.toml").write_text(older)
    assert load_spec(tmp_path / "older.toml").mask_clouds
    with pytest.raises(UserInputError, match=r"wrong kind \(\[input\] mask_clouds must be true or false, not 'no'\)"):
        load_spec(_variant(tmp_path, "mask_clouds = true", 'mask_clouds = "no"'))


TRAINING = """
[training]
run = "runs/r1"
steps = 600
data = "train.zarr sha256:0123abcd"
finished = "2026-12-03T16:00:00Z"
objective = "reconstruction 1.0, uniformity 0.05, consistency 0.02"
"""
TRAINED = ('file = ""\nsha256 = ""', f'file = "encoder.safetensors"\nsha256 = "{"ab" * 32}"')


def test_a_trained_spec_names_the_run_that_trained_it(tmp_path: Path) -> None:
    spec = load_spec(_variant(tmp_path, *TRAINED, extra=TRAINING))
    objective = "reconstruction 1.0, uniformity 0.05, consistency 0.02"
    assert spec.training == TrainingRecord(
        "runs/r1", 600, "train.zarr sha256:0123abcd", "2026-12-03T16:00:00Z", objective
    )
    assert provenance_of(spec).description == (
        f"weights encoder.safetensors sha256 {'ab' * 32}, "
        "trained by run runs/r1 for 600 steps on train.zarr sha256:0123abcd"
    )
    assert load_spec(_variant(tmp_path, *TRAINED)).training is None
    with pytest.raises(UserInputError, match=r"a \[training\] record \(run runs/r1\) needs the weights it made"):
        load_spec(_variant(tmp_path, "seed = 0", "seed = 0", extra=TRAINING))
    with pytest.raises(UserInputError, match=r"lacks the field '\[training\] steps'"):
        load_spec(_variant(tmp_path, *TRAINED, extra=TRAINING.replace("steps = 600\n", "")))
    with pytest.raises(UserInputError, match=r"\[training\] steps must be a whole number, not '600'"):
        load_spec(_variant(tmp_path, *TRAINED, extra=TRAINING.replace("steps = 600", 'steps = "600"')))


# --- architecture: positions, scale, lattice, split forward, checkpointing ---------------------


def _smooth_inputs(windows: int = 2, frames: int = 8, seed: int = 1) -> tuple[torch.Tensor, ...]:
    """Inputs that vary smoothly in space, as imagery does within a field (bicubic upsampling of
    4 x 4 noise, unit RMS), every pixel valid, frames 40 days apart."""
    g = torch.Generator().manual_seed(seed)
    size, bands = SPEC.window, len(SPEC.bands)
    coarse = torch.randn(windows * frames, bands, 4, 4, generator=g)
    x = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)
    x = (x / x.square().mean().sqrt()).reshape(windows, frames, bands, size, size)
    valid = torch.ones(windows, frames, size, size, dtype=torch.bool)
    t = torch.tensor([[T0 + DAY_MS * 40 * i for i in range(frames)]]).expand(windows, frames)
    return x, valid, t, _inputs()[3].expand(windows, 2)


def test_parameters_that_start_at_a_constant(model: STPEncoder) -> None:
    state = model.state_dict()
    tables = [value for name, value in state.items() if name.endswith("space.position_bias")]
    assert len(tables) == SPEC.depth
    assert all(table.shape == (3 * 3, SPEC.space_heads) and not table.any() for table in tables)  # 2 x 2 tokens
    up = [module for module in model.modules() if isinstance(module, Rescale) and not module.down]
    assert len(up) == 3 * SPEC.depth + 2
    assert all(torch.equal(module.resample.weight, torch.ones_like(module.resample.weight)) for module in up)
    gains = [value for name, value in state.items() if name.endswith(".gain")]
    assert len(gains) == 6 * SPEC.depth
    assert all(torch.equal(gain, torch.full_like(gain, EXCHANGE_GAIN)) for gain in gains)


@pytest.mark.parametrize("factor", [2, 4, 8])
@pytest.mark.parametrize("with_gain", [False, True])
def test_the_upsampling_is_the_transposed_convolution_it_replaces(factor: int, with_gain: bool) -> None:
    # float64: both sides compute each output as one product plus the bias, so they agree to
    # rounding; the gradients too (training runs through it).
    generator = torch.Generator().manual_seed(factor)
    conv = torch.nn.ConvTranspose2d(6, 6, factor, stride=factor, groups=6).double()
    x = torch.randn(3, 6, 5, 7, dtype=torch.float64, generator=generator, requires_grad=True)
    gain = torch.randn(6, dtype=torch.float64, generator=generator, requires_grad=True) if with_gain else None
    expected = conv(x) * (1.0 if gain is None else gain[:, None, None])
    got = depthwise_upsample(x, conv.weight, conv.bias, gain)
    assert got.shape == expected.shape == (3, 6, 5 * factor, 7 * factor)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    upstream = torch.randn(expected.shape, dtype=torch.float64, generator=generator)
    assert conv.bias is not None
    leaves = [x, conv.weight, conv.bias] + ([gain] if gain is not None else [])
    for want, have in zip(
        torch.autograd.grad(expected, leaves, upstream), torch.autograd.grad(got, leaves, upstream), strict=True
    ):
        torch.testing.assert_close(have, want, rtol=1e-12, atol=1e-12)


def test_the_position_bias_depends_on_relative_offsets_only() -> None:
    h, w = 3, 4
    index = relative_position_index((h, w))
    for i in range(h * w):
        for j in range(h * w):
            (yi, xi), (yj, xj) = divmod(i, w), divmod(j, w)
            assert index[i, j] == (yi - yj + h - 1) * (2 * w - 1) + (xi - xj + w - 1)
    block = TransformerBlock(8, heads=2, mlp_ratio=1, grid=(h, w))
    assert block.position_bias is not None
    assert block.position_bias.shape == ((2 * h - 1) * (2 * w - 1), 2)
    assert "position_index" not in block.state_dict()  # derived from the grid, not a weight


def test_states_stay_bounded_through_deep_stacks() -> None:
    # Exchanges resample normalised sources, with gains starting at EXCHANGE_GAIN: the states grow
    # additively (measured on this input, tiny widths, depth 15, seed 0: RMS at most 4.64) where
    # raw exchanges compounded ~1.27x per block, to 18 / 47 / 63 after block 15. The bound leaves
    # twice the measured value for other inputs and lies six times below the compounding regime.
    deep = build_model(dataclasses.replace(SPEC, depth=15))[0]
    rms: list[float] = []
    for block in deep.blocks:
        block.register_forward_hook(lambda _, __, states: rms.extend(float(s.square().mean().sqrt()) for s in states))
    _run(deep, *_smooth_inputs(windows=1, frames=4))
    assert len(rms) == 3 * 15
    assert max(rms) < 10.0


def _lattice_ratio(field: torch.Tensor, margin: int) -> float:
    """Mean cosine of horizontally adjacent pixels across 2 x 2 block boundaries (pairs x, x + 1
    with x odd) over the mean within blocks (x even), in the core: 1 when no 2 px lattice shows."""
    core = field[..., margin:-margin, margin:-margin]
    cosine = (core[..., :-1] * core[..., 1:]).sum(dim=1)
    across = (torch.arange(cosine.shape[-1]) + margin) % 2 == 1
    return float(cosine[..., across].mean() / cosine[..., ~across].mean())


def test_an_untrained_field_has_no_2px_lattice(model: STPEncoder) -> None:
    # Bilinear doubling then a 3x3 convolution computes every pixel alike. Measured on these
    # inputs: 1.01 (mean neighbour cosine 0.98); the former transposed convolution with kernel =
    # stride = 2 (and random up-resampling kernels) gave 0.63 (mean neighbour cosine 0.05).
    assert _lattice_ratio(_run(model, *_smooth_inputs()), SPEC.context) >= 0.98


def test_features_are_computed_once_and_pooled_per_period(model: STPEncoder) -> None:
    x, valid, t, period = _inputs()
    with torch.inference_mode():
        features = model.features(x, valid, t)
        for days in (0, 182):
            shifted = period + days * DAY_MS
            assert torch.equal(model.summarise(features, shifted), model(x, valid, t, shifted))
    half = SPEC.window // 2
    assert features.maps.shape == (12, SPEC.precision_width, half, half)
    assert features.valid.shape == (1, 12, half, half)
    assert features.frame_code.shape == (1, 12, 2 * SPEC.timecode.frequencies)
    assert features.batch == (1, 12)


def test_activation_checkpointing_gives_the_same_gradients() -> None:
    def gradients(checkpointing: bool) -> tuple[dict[str, torch.Tensor | None], int]:
        encoder = build_model(SPEC)[0].train()
        encoder.checkpointing = checkpointing
        calls: list[int] = []
        for block in encoder.blocks:
            block.register_forward_pre_hook(lambda *_: calls.append(1))  # recomputation may stop early
        target = torch.randn(1, SPEC.output_dim, SPEC.window, SPEC.window, generator=torch.Generator().manual_seed(5))
        (encoder(*_inputs(frames=6)) * target).sum().backward()
        return {name: parameter.grad for name, parameter in encoder.named_parameters()}, len(calls)

    plain, plain_calls = gradients(checkpointing=False)
    recomputed, recomputed_calls = gradients(checkpointing=True)
    assert (plain_calls, recomputed_calls) == (SPEC.depth, 2 * SPEC.depth)  # each block ran again in backward
    for name, grad in plain.items():  # every parameter has a gradient: nothing unused for DDP to trip on
        other = recomputed[name]
        assert grad is not None, f"{name} got no gradient"
        assert other is not None, f"{name} got no gradient with checkpointing"
        assert torch.allclose(grad, other, rtol=1e-5, atol=1e-7), name


# --- over cubes ---------------------------------------------------------------------------------


def _cube(rows: int, cols: int, halo: int, frames: int = 9, seed: int = 0) -> xr.Dataset:
    """A random cube on the tile grid: `rows` x `cols` inner pixels from the tile's corner + halo."""
    geobox = TILE.geobox[0:rows, 0:cols].pad(halo)
    rng = np.random.default_rng(seed)
    shape = (frames, len(SPEC.bands), *geobox.shape)
    reflectance = rng.uniform(0.01, 0.4, shape).astype(np.float32)
    valid = rng.random((frames, *geobox.shape)) > 0.25
    valid[2] = False  # a frame without any valid pixel
    reflectance[:, :, :, :][~np.broadcast_to(valid[:, None], shape)] = np.nan
    times = np.array([np.datetime64("2021-01-03T09:30:16.500") + np.timedelta64(40 * i, "D") for i in range(frames)])
    coords = {"time": times, "band": list(SPEC.bands), **xr_coords(geobox)}
    return xr.Dataset(
        {"reflectance": (("time", "band", "y", "x"), reflectance), "valid": (("time", "y", "x"), valid)}, coords=coords
    )


def test_one_piece_equals_two_by_two_pieces(model: STPEncoder) -> None:
    halo, core = required_halo(SPEC, overlap=False), SPEC.core
    whole = _cube(4 * core, 4 * core, halo)
    full = encode_cube(
        whole, Period.year(2021), model, SPEC, EncodeOptions(device="cpu", batch_size=5), provenance=PROVENANCE
    )
    for r in (0, 2 * core):
        for c in (0, 2 * core):
            piece = whole.isel(y=slice(r, r + 2 * core + 2 * halo), x=slice(c, c + 2 * core + 2 * halo))
            part = encode_cube(
                piece, Period.year(2021), model, SPEC, EncodeOptions(device="cpu", batch_size=2), provenance=PROVENANCE
            )
            expected = full.embedding.isel(y=slice(r, r + 2 * core), x=slice(c, c + 2 * core))
            assert np.nanmax(np.abs(part.embedding.values - expected.values)) <= 1e-6
    norms = np.linalg.norm(full.embedding.values, axis=0)
    assert np.allclose(norms[np.isfinite(norms)], 1.0, atol=1e-5)
    assert full.embedding.shape == (64, 4 * core, 4 * core)
    assert (full.observations.values == whole.valid.isel(y=slice(halo, -halo), x=slice(halo, -halo)).sum("time")).all()


def test_overlap_is_split_invariant_too(model: STPEncoder) -> None:
    halo, core = required_halo(SPEC, overlap=True), SPEC.core
    whole = _cube(2 * core, 2 * core, halo, seed=4)
    options = EncodeOptions(device="cpu", overlap=True)
    full = encode_cube(whole, Period.year(2021), model, SPEC, options, provenance=PROVENANCE)
    piece = whole.isel(y=slice(core, None), x=slice(0, core + 2 * halo))
    part = encode_cube(piece, Period.year(2021), model, SPEC, options, provenance=PROVENANCE)
    expected = full.embedding.isel(y=slice(core, None), x=slice(0, core))
    assert np.nanmax(np.abs(part.embedding.values - expected.values)) <= 1e-6


def test_outputs_say_the_model_is_untrained(model: STPEncoder) -> None:
    cube = _cube(SPEC.core, SPEC.core, required_halo(SPEC, overlap=False))
    out = encode_cube(cube, Period.year(2021), model, SPEC, EncodeOptions(device="cpu"), provenance=PROVENANCE)
    assert out.attrs["model_trained"] == 0
    assert out.attrs["model_weights"] == "untrained: deterministic initialisation from seed 0"
    assert out.attrs["valid_period"] == "[2021-01-01T00:00:00+00:00, 2022-01-01T00:00:00+00:00)"


def test_long_time_series_shrink_the_batch_not_the_result(model: STPEncoder) -> None:
    cube = _cube(2 * SPEC.core, 2 * SPEC.core, required_halo(SPEC, overlap=False), frames=40)
    wide = encode_cube(cube, Period.year(2021), model, SPEC, EncodeOptions(device="cpu"), provenance=PROVENANCE)
    narrow = encode_cube(
        cube, Period.year(2021), model, SPEC, EncodeOptions(device="cpu", frames_per_batch=40), provenance=PROVENANCE
    )
    assert np.nanmax(np.abs(wide.embedding.values - narrow.embedding.values)) <= 1e-6


def test_overlap_blends_unit_vectors(model: STPEncoder) -> None:
    halo = required_halo(SPEC, overlap=True)
    cube = _cube(2 * SPEC.core, 2 * SPEC.core, halo)
    out = encode_cube(
        cube, Period.year(2021), model, SPEC, EncodeOptions(device="cpu", overlap=True), provenance=PROVENANCE
    )
    norms = np.linalg.norm(out.embedding.values, axis=0)
    assert np.allclose(norms, 1.0, atol=1e-5)


class _OneVectorPerWindow(torch.nn.Module):
    """A stand-in encoder that gives every pixel of a window one vector, drawn from the window's
    centre pixel: a field made of it has a seam at every core edge unless windows are blended.
    (The untrained STP field is too noisy, neighbour cosine ~0.2, for seams to show in it.)"""

    def __init__(self) -> None:
        super().__init__()
        self.mix = torch.randn(len(SPEC.bands), 64, generator=torch.Generator().manual_seed(0))

    def forward(self, x: torch.Tensor, valid: torch.Tensor, t: torch.Tensor, period: torch.Tensor) -> torch.Tensor:
        centre = x[:, :, :, SPEC.window // 2, SPEC.window // 2].sum(dim=1)
        vector = torch.nn.functional.normalize(centre @ self.mix + 2.0, dim=1)
        return vector[:, :, None, None].expand(-1, -1, SPEC.window, SPEC.window)


def test_overlap_removes_the_seams_between_windows() -> None:
    def ratio(overlap: bool) -> float:
        cube = _cube(4 * SPEC.core, 4 * SPEC.core, required_halo(SPEC, overlap), seed=0)
        options = EncodeOptions(device="cpu", overlap=overlap)
        field = encode_cube(cube, Period.year(2021), _OneVectorPerWindow(), SPEC, options, provenance=PROVENANCE)  # type: ignore[arg-type]
        return seam_ratio(field.embedding.values, SPEC.core)

    assert ratio(overlap=False) < 0.9  # measured 0.84: the seams are there, and the ratio sees them
    assert ratio(overlap=True) > 0.98  # measured 1.00: blended away


def test_nan_inputs_are_masked_not_propagated(model: STPEncoder) -> None:
    halo = required_halo(SPEC, overlap=False)
    cube = _cube(SPEC.core, SPEC.core, halo)
    cube["reflectance"][0, 1, 5:9, 5:9] = np.nan  # NaN in one band where the mask says valid
    cube["valid"][0, 5:9, 5:9] = True
    out = encode_cube(cube, Period.year(2021), model, SPEC, EncodeOptions(device="cpu"), provenance=PROVENANCE)
    assert np.isfinite(out.embedding.values).all()


def test_bad_cubes_are_refused(model: STPEncoder) -> None:
    halo = required_halo(SPEC, overlap=False)
    cube = _cube(SPEC.core, SPEC.core, halo)
    options = EncodeOptions(device="cpu")
    with pytest.raises(UserInputError, match="bands B03, B02, B04, B08, B11 do not match model tiny's B02, B03"):
        encode_cube(cube.isel(band=[1, 0, 2, 3, 4]), Period.year(2021), model, SPEC, options, provenance=PROVENANCE)
    with pytest.raises(UserInputError, match="do not match"):
        encode_cube(cube.isel(band=[0, 1, 2, 3]), Period.year(2021), model, SPEC, options, provenance=PROVENANCE)
    with pytest.raises(UserInputError, match="smaller than one 32 px window of model tiny with its 8 px halo"):
        encode_cube(cube.isel(y=slice(0, 20)), Period.year(2021), model, SPEC, options, provenance=PROVENANCE)
    shifted = _cube(3 * SPEC.core, 3 * SPEC.core, halo).isel(x=slice(3, None))
    with pytest.raises(UserInputError, match="not made of whole 16 px window cores of the global grid"):
        encode_cube(shifted, Period.year(2021), model, SPEC, options, provenance=PROVENANCE)


def test_devices() -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the fallback cannot be seen")
    with pytest.raises(UserInputError, match="device 'cuda' requested but CUDA is not available"):
        resolve_device("cuda")
    with pytest.warns(DeviceFallbackWarning, match="no CUDA device found: encoding on the CPU"):
        assert resolve_device("auto").type == "cpu"
    with pytest.raises(UserInputError, match="device 'tpu7' is not understood"):
        resolve_device("tpu7")


def test_seam_ratio_sees_blocks() -> None:
    smooth = np.zeros((2, 32, 32), np.float32)
    smooth[0] = 1.0
    assert seam_ratio(smooth, 16) == pytest.approx(1.0)
    blocky = smooth.copy()
    blocky[:, :, 16:] = np.array([0.0, 1.0], np.float32)[:, None, None]
    assert seam_ratio(blocky, 16) < 0.7


# --- bit-exact per window -----------------------------------------------------------------------

# The kernels of an AVX2-only CPU, on any x86 machine: ATen's dispatch, oneDNN's and MKL's ISA caps.
AVX2_KERNELS = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"}
ROW_OF_WINDOWS = 15  # one row of windows: room for a batch of 8 with the target at each place


def _row_cube() -> xr.Dataset:
    return _cube(SPEC.core, ROW_OF_WINDOWS * SPEC.core, required_halo(SPEC, overlap=False), seed=7)


def _target_core(cube: xr.Dataset, first: int, count: int, threads: int) -> np.ndarray:
    """Window 7's core, encoded in a piece of the row holding windows first .. first + count - 1
    (so in a batch of `count` windows, at place 7 - first), with `threads` torch threads."""
    from aef_pipeline.environment import torch_threads

    halo, core = required_halo(SPEC, overlap=False), SPEC.core
    piece = cube.isel(x=slice(first * core, (first + count) * core + 2 * halo))
    with torch_threads(threads):
        field = encode_cube(
            piece, Period.year(2021), build_model(SPEC)[0], SPEC, EncodeOptions(device="cpu"), provenance=PROVENANCE
        )
    target = (7 - first) * core
    return np.asarray(field.embedding.values[:, :, target : target + core])


def bit_identical_in_any_batch() -> None:
    """Window 7 alone, in batches of 2, 3, 5 and 8 at every place, with 1 and 2 threads."""
    cube = _row_cube()
    reference = _target_core(cube, 7, 1, threads=1)
    pieces = [(7, 1), (6, 2), (5, 3), (3, 5), *((first, 8) for first in range(8))]
    for threads in (1, 2):
        for first, count in pieces:
            got = _target_core(cube, first, count, threads)
            assert np.array_equal(got, reference, equal_nan=True), (threads, first, count)
    assert np.isfinite(reference).all()


def test_a_window_is_bit_identical_whatever_its_batch_and_threads() -> None:
    bit_identical_in_any_batch()


def test_a_window_is_bit_identical_with_avx2_kernels_too() -> None:
    # This machine's other kernels (AVX2 on an AVX-512 CPU): where CI's machine may differ.
    code = "from tests.test_encoder import bit_identical_in_any_batch; bit_identical_in_any_batch()"
    done = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, **AVX2_KERNELS},
        cwd=Path(__file__).parents[1],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr[-3000:]


# Other machines' kernels: AVX2 (an AVX-512 CPU's other path) and no SIMD at all (ATen's default).
OTHER_KERNELS = {
    "avx2": AVX2_KERNELS,
    "scalar": {"ATEN_CPU_CAPABILITY": "default", "ONEDNN_MAX_CPU_ISA": "SSE41", "MKL_ENABLE_INSTRUCTIONS": "SSE4_2"},
}


def save_bound_field(path: str) -> None:
    """A 128 x 128 px field (64 windows, 20 frames) as float32 .npy: computed once per kernel set."""
    cube = _cube(8 * SPEC.core, 8 * SPEC.core, required_halo(SPEC, overlap=False), frames=20, seed=3)
    field = encode_cube(
        cube, Period.year(2021), build_model(SPEC)[0], SPEC, EncodeOptions(device="cpu"), provenance=PROVENANCE
    )
    np.save(path, field.embedding.values)


@pytest.mark.parametrize("kernels", sorted(OTHER_KERNELS))
def test_other_cpu_kernels_move_values_by_at_most_one_int8_step(tmp_path: Path, kernels: str) -> None:
    # Bitwise equality across machines is impossible (other vector widths sum in other orders);
    # the bound docs/reliability.md states is what this measures: floats within 2e-6, int8 values
    # at most one step apart, in under 1e-4 of them (measured: 3e-6 of values for AVX2, 1.3e-5
    # without SIMD; floats within 2.5e-7 and 5.7e-7).
    from aef_pipeline.store import quantise

    save_bound_field(str(tmp_path / "here.npy"))
    code = f"from tests.test_encoder import save_bound_field; save_bound_field({str(tmp_path / 'other.npy')!r})"
    done = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, **OTHER_KERNELS[kernels]},
        cwd=Path(__file__).parents[1],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    here, other = np.load(tmp_path / "here.npy"), np.load(tmp_path / "other.npy")
    assert np.isfinite(here).all()
    assert np.abs(here - other).max() <= 2e-6
    steps = np.abs(quantise(here).astype(np.int16) - quantise(other).astype(np.int16))
    assert steps.max() <= 1
    assert (steps > 0).mean() < 1e-4


def test_a_spec_whose_output_the_store_cannot_hold_is_refused(tmp_path: Path) -> None:
    text = (
        (Path(__file__).parents[1] / "models" / "tiny.toml").read_text().replace("output_dim = 64", "output_dim = 32")
    )
    spec = tmp_path / "narrow.toml"
    spec.write_text(text)
    with pytest.raises(UserInputError, match="output_dim 32 cannot be stored: embedding stores hold 64 dimensions"):
        load_spec(spec)
