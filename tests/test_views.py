"""Seeing fields: quicklooks (one PCA colour scale over every tile and zone)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from PIL.PngImagePlugin import PngImageFile

from aef_pipeline.cli import main
from aef_pipeline.store import create_store, finalize, write_tile
from tests.test_maps import LAYOUT, TILES, YEAR, _stripes


@pytest.fixture(scope="module")
def stripes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two tiles of zone 33N and one of 34N, each a 384 px window of two classes in stripes."""
    path = tmp_path_factory.mktemp("views") / "field.zarr"
    create_store(path, TILES, [YEAR], LAYOUT)
    for tile in TILES:
        write_tile(path, tile, YEAR, _stripes(tile), {"model": LAYOUT.model, "model_weights": LAYOUT.model_weights})
    finalize(path)
    return path


def test_a_quicklook_colours_each_class_alike_across_tiles_and_zones(
    stripes: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "quick.png"
    assert main(["quicklook", str(stripes), "--out", str(out), "--max-size", "4000"]) == 0
    assert "untrained encoder" in capsys.readouterr().out
    with Image.open(out) as image:
        assert isinstance(image, PngImageFile)
        assert image.mode == "RGBA"
        assert image.text["aef:period"] == "2022"
        assert len(json.loads(image.text["aef:explained_variance"])) == 3
        rgba = np.asarray(image)
    opaque = rgba[..., 3] == 255
    assert 0.01 < opaque.mean() < 0.99  # the stripes show, what was never written is transparent
    colours = rgba[opaque][:, :3].astype(float)
    # Two classes: every opaque pixel is near one of two colours (one scale across tiles and zones).
    centre = colours.mean(axis=0)
    side = (colours - centre) @ np.linalg.svd(colours - centre, full_matrices=False)[2][0] > 0
    within = np.mean([colours[side == s].std(axis=0).mean() for s in (True, False)])
    between = np.linalg.norm(colours[side].mean(axis=0) - colours[~side].mean(axis=0))
    assert between > 5 * within, (between, within)
    assert 0.3 < side.mean() < 0.7  # the two stripes are equally wide


def test_a_small_quicklook_averages_blocks(stripes: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "small.png"
    assert main(["quicklook", str(stripes), "--out", str(out), "--max-size", "256"]) == 0
    with Image.open(out) as image:
        assert max(image.size) <= 256  # the three tiles lie 250 km apart: a long thin strip
    assert "field px per picture px" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("extra", "phrase"),
    [
        (["--max-size", "8"], "--max-size 8 is below 16 px"),
        (["--period", "2021"], "holds no period 2021; it holds 2022"),
        (["--out", "{tmp}/quick.jpg"], "end it with .png"),
        (["--out", "{tmp}/exists.png"], "exists: choose another --out or pass --overwrite"),
    ],
)
def test_bad_quicklook_input(
    stripes: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], phrase: str
) -> None:
    (tmp_path / "exists.png").write_bytes(b"mine")
    argv = ["quicklook", str(stripes), "--out", str(tmp_path / "quick.png"), *(a.format(tmp=tmp_path) for a in extra)]
    before = sorted((p, p.stat().st_mtime_ns) for p in tmp_path.rglob("*"))
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert phrase in err[0]
    assert sorted((p, p.stat().st_mtime_ns) for p in tmp_path.rglob("*")) == before
