"""The bad-input table: each mistake gives one line naming the problem and the fix, exit 2, and
leaves nothing behind (docs/reliability.md)."""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from pathlib import Path

import geopandas as gpd
import pytest
import shapely
import torch

from aef_pipeline.cli import main
from aef_pipeline.grid import TileId
from aef_pipeline.model import build_model, load_spec, provenance_of, save_weights
from aef_pipeline.plan import Period
from aef_pipeline.store import StoreLayout, create_store
from aef_pipeline.testing.stores import older_layout_store

TINY_SPEC = Path(__file__).resolve().parents[1] / "models" / "tiny.toml"
BBOX = ("--bbox", "15.062", "46.197", "15.068", "46.203")
RUN = ("run", "--stac", "{stac}", "--device", "cpu", "--workers", "1")
AREA = (*BBOX, "--years", "2022", "--out", "{out}")


def region_run(path: str) -> tuple[str, ...]:
    """`run` over the region in `path` instead of BBOX."""
    return (*RUN, "--region", path, "--years", "2022", "--out", "{out}")


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


def write_fixtures(tmp: Path) -> dict[str, str]:
    """The input files the table's rows point at, written into `tmp`: placeholder name -> path."""
    files = {"bad_toml": tmp / "bad.toml", "unknown_key": tmp / "unknown.toml", "wrong_type": tmp / "wrong.toml"}
    files["bad_toml"].write_text("bbox = [1, 2\n")
    files["unknown_key"].write_text('colour = "blue"\n')
    files["wrong_type"].write_text('bbox = "everywhere"\n')
    files["digits_bbox"] = tmp / "digits.toml"
    files["digits_bbox"].write_text('bbox = "1234"\nyears = "2022"\n')
    files["word_bbox"] = tmp / "word.toml"
    files["word_bbox"].write_text('bbox = [15, 46, 16, "x"]\nyears = "2022"\n')
    files["bad_spec"] = tmp / "bad-spec.toml"
    files["bad_spec"].write_text("name = 'broken'\n[model\n")
    files["a_file"] = tmp / "a-file"
    files["a_file"].write_text("not a store")
    files["not_store"] = tmp / "not-a-store"
    files["not_store"].mkdir()
    (files["not_store"] / "notes.txt").write_text("mine")
    files["empty_region"] = tmp / "empty.geojson"
    files["empty_region"].write_text('{"type": "FeatureCollection", "features": []}')
    files["point_region"] = tmp / "point.geojson"
    files["point_region"].write_text('{"type": "Point", "coordinates": [15.06, 46.2]}')
    files["wide_region"] = tmp / "wide.geojson"  # drawn across the antimeridian, not split there
    files["wide_region"].write_text(
        '{"type": "Polygon", "coordinates": [[[179, 60], [181, 60], [181, 61], [179, 60]]]}'
    )
    files["no_crs_region"] = tmp / "no-crs.parquet"
    gpd.GeoDataFrame(geometry=[shapely.box(15.06, 46.19, 15.07, 46.2)]).to_parquet(files["no_crs_region"])
    files["full_dir"] = tmp / "full"
    files["full_dir"].mkdir()
    (files["full_dir"] / "x").write_text("x")
    pickled = io.BytesIO()
    torch.save({"blocks.0.weight": torch.zeros(2)}, pickled)  # a pickle, whatever its name says
    files["pt_spec"] = spec_with_weights(tmp, "tiny.pt", pickled.getvalue())
    files["disguised_spec"] = spec_with_weights(tmp, "tiny.safetensors", pickled.getvalue())
    files["wrong_hash_spec"] = spec_with_weights(tmp, "other.safetensors", b"{}", sha256="0" * 64)
    encoder, _ = build_model(load_spec("tiny"))  # the seeded weights, saved: a "trained" checkpoint
    digest = save_weights(encoder, tmp / "trained.safetensors")
    files["wrong_weights_spec"] = spec_with_weights(tmp, "trained.safetensors", None, sha256=digest)
    tile, tiny = TileId(33, "N", 26, 266), StoreLayout("tiny", provenance_of(load_spec("tiny")).description)
    files["tiny_store"] = tmp / "tiny.zarr"  # a 2022 store of the model `tiny`, as `run` makes it
    create_store(files["tiny_store"], [tile], [Period.year(2022)], tiny)
    files["older_store"] = tmp / "older.zarr"  # the bbox-extent layout, before zone-wide groups
    older_layout_store(files["older_store"], [tile], [Period.year(2022)], tiny)
    return {name: str(path) for name, path in files.items()}


@dataclass(frozen=True)
class Case:
    """One mistake: the command line and the phrases its one-line error must all contain. Both may
    hold placeholders: {tmp} (the folder of the input files), {out} (an output path in the test's
    own folder), {stac} (the test catalog's URL) and the names `write_fixtures` returns."""

    name: str
    argv: tuple[str, ...]
    phrases: tuple[str, ...]


CASES = [
    Case("no bbox", (*RUN, "--years", "2022", "--out", "{out}"), ("no area given", "pass --bbox W S E N or --region")),
    Case(
        "bbox and region",
        (*RUN, *AREA, "--region", "{tmp}/areas.gpkg"),
        ("both --bbox and --region given", "give one of them"),
    ),
    Case(
        "region file missing",
        region_run("{tmp}/areas.gpkg"),
        ("region file {tmp}/areas.gpkg not found", "give a GeoJSON, GeoPackage or GeoParquet file of polygons"),
    ),
    Case(
        "region file not a vector file",
        region_run("{bad_toml}"),
        ("cannot read a region from {bad_toml}",),
    ),
    Case(
        "region file without features",
        region_run("{empty_region}"),
        ("{empty_region} holds no features",),
    ),
    Case(
        "region file without a CRS",
        region_run("{no_crs_region}"),
        ("{no_crs_region} declares no CRS", "write the file with its CRS"),
    ),
    Case(
        "region of points",
        region_run("{point_region}"),
        ("features [0] are not polygons (the first is a point)", "buffer points or lines first"),
    ),
    Case(
        "region across the antimeridian, not split",
        region_run("{wide_region}"),
        ("region wide.geojson spans 179 60 181 61", "split it at the antimeridian"),
    ),
    Case(
        "bbox of three numbers",
        (*RUN, "--bbox", "1", "2", "3", "--years", "2022", "--out", "{out}"),
        ("argument --bbox: expected 4 arguments",),
    ),
    Case(
        "bbox south above north",
        (*RUN, "--bbox", "15", "47", "16", "46", "--years", "2022", "--out", "{out}"),
        ("south must be below north",),
    ),
    Case(
        "bbox latitude 95",
        (*RUN, "--bbox", "15", "46", "16", "95", "--years", "2022", "--out", "{out}"),
        ("north 95.0 is outside -90..90",),
    ),
    Case(
        "bbox not numbers",
        (*RUN, "--bbox", "a", "b", "c", "d", "--years", "2022", "--out", "{out}"),
        ("argument --bbox: invalid float value: 'a'",),
    ),
    Case("no output", (*RUN, *BBOX, "--years", "2022"), ("no output given", "pass --out PATH")),
    Case(
        "year before 2017",
        (*RUN, *BBOX, "--years", "2016", "--out", "{out}"),
        ("--years '2016' is outside 2017-2024",),
    ),
    Case(
        "year after 2024",
        (*RUN, *BBOX, "--years", "2025", "--out", "{out}"),
        ("--years '2025' is outside 2017-2024",),
    ),
    Case(
        "years inverted",
        (*RUN, *BBOX, "--years", "2024-2020", "--out", "{out}"),
        ("--years '2024-2020' is an inverted range", "write the earlier year first"),
    ),
    Case(
        "years not a year",
        (*RUN, *BBOX, "--years", "recent", "--out", "{out}"),
        ("--years 'recent' is not understood", "write a year"),
    ),
    Case(
        "period malformed",
        (*RUN, *BBOX, "--period", "2022-13-01/2023-01-01", "--out", "{out}"),
        ("--period '2022-13-01/2023-01-01' is not understood", "as ISO dates"),
    ),
    Case(
        "period ends first",
        (*RUN, *BBOX, "--period", "2022-06-01/2022-01-01", "--out", "{out}"),
        ("period 2022-06-01..2022-01-01 is empty", "end must follow start"),
    ),
    Case("unknown model", (*RUN, *AREA, "--model", "huge"), ("model spec 'huge' not found", "known specs:")),
    Case(
        "model file missing",
        (*RUN, *AREA, "--model", "{tmp}/missing.toml"),
        ("model spec '{tmp}/missing.toml' not found",),
    ),
    Case("model file not TOML", (*RUN, *AREA, "--model", "{bad_spec}"), ("model spec {bad_spec} is not valid TOML",)),
    Case(
        "model weights a pickle file",
        (*RUN, *AREA, "--model", "{pt_spec}"),
        ("weights file tiny.pt is not .safetensors", "never pickle"),
    ),
    Case(
        "model weights pickle named .safetensors",
        (*RUN, *AREA, "--model", "{disguised_spec}"),
        ("{tmp}/tiny.safetensors are not a safetensors file", "never pickle"),
    ),
    Case(
        "model weights with another hash",
        (*RUN, *AREA, "--model", "{wrong_hash_spec}"),
        ("{tmp}/other.safetensors have sha256 ", f"the spec expects {'0' * 64}: refusing to load"),
    ),
    Case("unknown storage", (*RUN, *AREA, "--storage", "int4"), ("argument --storage: invalid choice: 'int4'",)),
    Case("unknown device", (*RUN, *AREA, "--device", "tpu"), ("device 'tpu' is not understood",)),
    Case("unknown flag", (*RUN, *AREA, "--colour", "blue"), ("unrecognized arguments: --colour blue",)),
    Case(
        "abbreviated flag",
        (*RUN, *BBOX, "--year", "2022", "--out", "{out}"),
        ("unrecognized arguments: --year 2022",),
    ),
    Case(
        "config file missing",
        (*RUN, "--config", "{tmp}/none.toml", "--out", "{out}"),
        ("--config {tmp}/none.toml cannot be read", "No such file or directory"),
    ),
    Case(
        "config not TOML",
        (*RUN, "--config", "{bad_toml}", "--out", "{out}"),
        ("--config {bad_toml} cannot be read", "Unclosed array"),
    ),
    Case(
        "config unknown key",
        (*RUN, "--config", "{unknown_key}", "--out", "{out}"),
        ("--config {unknown_key}: unknown option colour",),
    ),
    Case(
        "config wrong type",
        (*RUN, "--config", "{wrong_type}", "--out", "{out}"),
        ("bbox 'everywhere' is not four numbers", "give bbox = [W, S, E, N] in --config"),
    ),
    Case(
        "config bbox of digits",  # a string of four digits must not become the bbox 1, 2, 3, 4
        (*RUN, "--config", "{digits_bbox}", "--out", "{out}"),
        ("bbox '1234' is not four numbers",),
    ),
    Case(
        "config bbox with a word",
        (*RUN, "--config", "{word_bbox}", "--out", "{out}"),
        ("bbox [15, 46, 16, 'x'] is not four numbers",),
    ),
    Case(
        "output is a file",
        (*RUN, *BBOX, "--years", "2022", "--out", "{a_file}"),
        ("{a_file} exists and is not a directory",),
    ),
    Case(
        "output holds other files",
        (*RUN, *BBOX, "--years", "2022", "--out", "{not_store}"),
        ("{not_store} holds something that is not an embedding store",),
    ),
    Case(
        "output unwritable",
        (*RUN, *BBOX, "--years", "2022", "--out", "/proc/aef/field.zarr"),
        ("cannot create /proc/aef/field.zarr.lock", "choose a writable --out"),
    ),
    Case("threads zero", (*RUN, *AREA, "--threads", "0"), ("--threads 0 is not a thread count",)),
    Case("stac retries negative", (*RUN, *AREA, "--stac-retries", "-1"), ("--stac-retries -1 is not a count",)),
    Case(
        "tasks per worker zero",
        (*RUN, *AREA, "--tasks-per-worker", "0"),
        ("--tasks-per-worker 0 is not a task count",),
    ),
    Case(
        "scheduler unreachable",
        ("run", "--stac", "{stac}", *AREA, "--scheduler", "tcp://127.0.0.1:9"),
        ("dask scheduler tcp://127.0.0.1:9 did not answer",),
    ),
    Case(
        "catalog unreachable (plan)",
        ("plan", "--stac", "http://127.0.0.1:9/", "--stac-retries", "1", *BBOX, "--years", "2022"),
        ("STAC catalog http://127.0.0.1:9/ did not answer",),
    ),
    Case(
        "unknown collection (plan)",
        ("plan", "--stac", "{stac}", "--collection", "landsat", *BBOX, "--years", "2022"),
        ("collection landsat not found", "it has: "),
    ),
    Case(
        "demo catalog into a full directory",
        ("demo-catalog", "{full_dir}"),
        ("{full_dir} exists and is not an empty directory",),
    ),
    Case(
        "adding to a store of another model",
        (*RUN, *BBOX, "--years", "2022", "--out", "{tiny_store}", "--model", "paper"),
        ("{tiny_store} was made with model 'tiny', this run uses 'paper'", "write to a new path"),
    ),
    Case(
        "adding to a store of another storage",
        (*RUN, *BBOX, "--years", "2022", "--out", "{tiny_store}", "--storage", "float16"),
        ("{tiny_store} was made with storage 'int8', this run uses 'float16'",),
    ),
    Case(
        "adding to a store of other weights",
        (*RUN, *BBOX, "--years", "2022", "--out", "{tiny_store}", "--model", "{wrong_weights_spec}"),
        ("{tiny_store} was made with model_weights 'untrained",),
    ),
    Case(
        "period overlapping the store's",
        (*RUN, *BBOX, "--period", "2022-07-01/2023-07-01", "--out", "{tiny_store}"),
        ("period 2022-07-01_2023-07-01 overlaps 2022", "periods must be equal or disjoint"),
    ),
    Case(
        "adding to a store of the older layout",
        (*RUN, *BBOX, "--years", "2022", "--out", "{older_store}"),
        ("{older_store} group 33N has the older bbox-extent layout", "run `aef-pipeline migrate {older_store}` once"),
    ),
    Case("migrate something else", ("migrate", "{not_store}"), ("{not_store} is not an aef-pipeline embedding store",)),
    Case("info on something else", ("info", "{not_store}"), ("{not_store} is not an aef-pipeline embedding store",)),
    Case(
        "verify on something else",
        ("verify", "{not_store}"),
        ("{not_store} is not an aef-pipeline embedding store",),
    ),
]


def test_case_names_are_unique() -> None:
    assert len({case.name for case in CASES}) == len(CASES)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """The rows' input files, written once (two stores among them): every row checks it leaves
    them as they were."""
    folder = tmp_path_factory.mktemp("inputs")
    return folder, write_fixtures(folder)


def snapshot(*folders: Path) -> list[tuple[Path, int]]:
    return sorted((p, p.stat().st_mtime_ns) for folder in folders for p in folder.rglob("*"))


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_bad_input(
    case: Case, inputs: tuple[Path, dict[str, str]], tmp_path: Path, stac_api: str, capsys: pytest.CaptureFixture[str]
) -> None:
    folder, files = inputs
    out = tmp_path / "field.zarr"
    paths = {**files, "tmp": str(folder), "out": str(out), "stac": stac_api}
    argv = [arg.format_map(paths) for arg in case.argv]
    before = snapshot(folder, tmp_path)
    with pytest.raises(SystemExit) as exited:
        raise SystemExit(main(argv))
    assert exited.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("aef-pipeline: error: ")
    for phrase in case.phrases:
        assert phrase.format_map(paths) in err[0]
    assert snapshot(folder, tmp_path) == before  # nothing written or touched
    assert not Path(str(out) + ".lock").exists()
