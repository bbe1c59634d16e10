"""The bad-input table: each mistake gives one line naming the problem and the fix, exit 2, and
leaves nothing behind (docs/reliability.md)."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import pytest
import torch

from aef_pipeline.cli import main

TINY_SPEC = Path(__file__).resolve().parents[1] / "models" / "tiny.toml"
BBOX = ["--bbox", "15.062", "46.197", "15.068", "46.203"]


def spec_with_weights(folder: Path, file: str, content: bytes | None, sha256: str | None = None) -> Path:
    """models/tiny.toml with a checkpoint `file` (written with `content`) and its sha256 (by default
    the content's own) in `folder`."""
    if content is not None:
        (folder / file).write_bytes(content)
    digest = sha256 or hashlib.sha256(content or b"").hexdigest()
    text = TINY_SPEC.read_text().replace('file = ""\nsha256 = ""', f'file = "{file}"\nsha256 = "{digest}"')
    spec = folder / f"tiny-{file.replace('.', '-')}.toml"
    spec.write_text(text)
    return spec


def _cases(tmp: Path, catalog: str) -> dict[str, tuple[list[str], str]]:
    """name -> (argv, a phrase the error must contain). `OUT` stands for the output path."""
    bad_toml = tmp / "bad.toml"
    bad_toml.write_text("bbox = [1, 2\n")
    unknown_key = tmp / "unknown.toml"
    unknown_key.write_text('colour = "blue"\n')
    wrong_type = tmp / "wrong.toml"
    wrong_type.write_text('bbox = "everywhere"\n')
    bad_spec = tmp / "bad-spec.toml"
    bad_spec.write_text("name = 'broken'\n[model\n")
    a_file = tmp / "a-file"
    a_file.write_text("not a store")
    not_store = tmp / "not-a-store"
    not_store.mkdir()
    (not_store / "notes.txt").write_text("mine")
    full_dir = tmp / "full"
    full_dir.mkdir()
    (full_dir / "x").write_text("x")
    pickled = io.BytesIO()
    torch.save({"blocks.0.weight": torch.zeros(2)}, pickled)  # a pickle, whatever its name says
    pt_spec = spec_with_weights(tmp, "tiny.pt", pickled.getvalue())
    disguised_spec = spec_with_weights(tmp, "tiny.safetensors", pickled.getvalue())
    wrong_hash_spec = spec_with_weights(tmp, "other.safetensors", b"{}", sha256="0" * 64)
    run = ["run", "--stac", catalog, "--device", "cpu", "--workers", "1"]
    area = [*BBOX, "--years", "2022", "--out", "OUT"]
    return {
        "no bbox": ([*run, "--years", "2022", "--out", "OUT"], "--bbox"),
        "bbox of three numbers": ([*run, "--bbox", "1", "2", "3", "--years", "2022", "--out", "OUT"], "4"),
        "bbox south above north": ([*run, "--bbox", "15", "47", "16", "46", "--years", "2022", "--out", "OUT"],
                                   "south"),
        "bbox latitude 95": ([*run, "--bbox", "15", "46", "16", "95", "--years", "2022", "--out", "OUT"], "95"),
        "bbox not numbers": ([*run, "--bbox", "a", "b", "c", "d", "--years", "2022", "--out", "OUT"], "bbox"),
        "no output": ([*run, *BBOX, "--years", "2022"], "--out"),
        "year before 2017": ([*run, *BBOX, "--years", "2016", "--out", "OUT"], "2017"),
        "year after 2024": ([*run, *BBOX, "--years", "2025", "--out", "OUT"], "2024"),
        "years inverted": ([*run, *BBOX, "--years", "2024-2020", "--out", "OUT"], "2020"),
        "years not a year": ([*run, *BBOX, "--years", "recent", "--out", "OUT"], "recent"),
        "period malformed": ([*run, *BBOX, "--period", "2022-13-01/2023-01-01", "--out", "OUT"], "period"),
        "period ends first": ([*run, *BBOX, "--period", "2022-06-01/2022-01-01", "--out", "OUT"], "period"),
        "unknown model": ([*run, *area, "--model", "huge"], "tiny"),
        "model file missing": ([*run, *area, "--model", str(tmp / "missing.toml")], "missing.toml"),
        "model file not TOML": ([*run, *area, "--model", str(bad_spec)], "bad-spec.toml"),
        "model weights a pickle file": ([*run, *area, "--model", str(pt_spec)], "never pickle"),
        "model weights pickle named .safetensors": ([*run, *area, "--model", str(disguised_spec)],
                                                    "not a safetensors file"),
        "model weights with another hash": ([*run, *area, "--model", str(wrong_hash_spec)], "sha256"),
        "unknown storage": ([*run, *area, "--storage", "int4"], "int4"),
        "unknown device": ([*run, *area, "--device", "tpu"], "tpu"),
        "unknown flag": ([*run, *area, "--colour", "blue"], "--colour"),
        "abbreviated flag": ([*run, *BBOX, "--year", "2022", "--out", "OUT"], "--year"),
        "config file missing": ([*run, "--config", str(tmp / "none.toml"), "--out", "OUT"], "none.toml"),
        "config not TOML": ([*run, "--config", str(bad_toml), "--out", "OUT"], "bad.toml"),
        "config unknown key": ([*run, "--config", str(unknown_key), "--out", "OUT"], "colour"),
        "config wrong type": ([*run, "--config", str(wrong_type), "--out", "OUT"], "bbox"),
        "output is a file": ([*run, *BBOX, "--years", "2022", "--out", str(a_file)], "a-file"),
        "output holds other files": ([*run, *BBOX, "--years", "2022", "--out", str(not_store)], "not-a-store"),
        "output unwritable": ([*run, *BBOX, "--years", "2022", "--out", "/proc/aef/field.zarr"], "/proc"),
        "scheduler unreachable": (["run", "--stac", catalog, *area, "--scheduler", "tcp://127.0.0.1:9"], "127.0.0.1:9"),
        "catalog unreachable (plan)": (["plan", "--stac", "http://127.0.0.1:9/", *BBOX, "--years", "2022"],
                                       "127.0.0.1:9"),
        "unknown collection (plan)": (["plan", "--stac", catalog, "--collection", "landsat", *BBOX, "--years", "2022"],
                                      "landsat"),
        "demo catalog into a full directory": (["demo-catalog", str(full_dir)], "full"),
        "info on something else": (["info", str(not_store)], "not-a-store"),
        "verify on something else": (["verify", str(not_store)], "not-a-store"),
    }  # fmt: skip


CASES = [
    "no bbox", "bbox of three numbers", "bbox south above north", "bbox latitude 95", "bbox not numbers", "no output",
    "year before 2017", "year after 2024", "years inverted", "years not a year", "period malformed",
    "period ends first", "unknown model", "model file missing", "model file not TOML", "model weights a pickle file",
    "model weights pickle named .safetensors", "model weights with another hash", "unknown storage",
    "unknown device", "unknown flag", "abbreviated flag", "config file missing", "config not TOML",
    "config unknown key", "config wrong type", "output is a file", "output holds other files", "output unwritable",
    "scheduler unreachable", "catalog unreachable (plan)", "unknown collection (plan)",
    "demo catalog into a full directory", "info on something else", "verify on something else",
]  # fmt: skip


@pytest.mark.parametrize("case", CASES)
def test_bad_input(case: str, tmp_path: Path, stac_api: str, capsys: pytest.CaptureFixture[str]) -> None:
    argv, phrase = _cases(tmp_path, stac_api)[case]
    out = tmp_path / "field.zarr"
    argv = [str(out) if arg == "OUT" else arg for arg in argv]
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(SystemExit) as exited:
        raise SystemExit(main(argv))
    assert exited.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("aef-pipeline: error: ")
    assert phrase in err[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written beside the inputs
    assert not Path(str(out) + ".lock").exists()
