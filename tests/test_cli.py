"""The command line: the demo catalog and one-line errors with exit status 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pystac
import pytest

from aef_pipeline.cli import main
from aef_pipeline.errors import UserInputError
from aef_pipeline.plan import parse_years


def test_demo_catalog_writes_a_static_catalog(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "demo"
    assert main(["demo-catalog", str(target), "--flavor", "planetary-computer", "--years", "2022", "--seed", "4"]) == 0
    items = list(pystac.Catalog.from_file(str(target / "catalog.json")).get_items(recursive=True))
    assert items
    assert all(item.collection_id == "sentinel-2-l2a" for item in items)
    assert "synthetic sentinel-2-l2a items" in capsys.readouterr().out
    assert [p.name for p in tmp_path.iterdir()] == ["demo"]  # no staging folder left behind


def test_demo_catalog_refuses_a_non_empty_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "keep.txt").write_text("mine")
    assert main(["demo-catalog", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"aef-pipeline: error: {tmp_path} exists and is not an empty directory: choose a new path"
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("20x1", "is not understood"),
        ("2022-2020", "inverted range"),
        ("1990", "outside 2015-2100"),
    ],
)
def test_bad_years_are_one_line_errors(
    text: str, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["demo-catalog", str(tmp_path / "x"), "--years", text]) == 2
    err = capsys.readouterr().err
    assert message in err
    assert err.count("\n") == 1
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize(
    ("text", "years"), [("2020", (2020,)), ("2017-2019", (2017, 2018, 2019)), ("2018,2020", (2018, 2020))]
)
def test_parse_years(text: str, years: tuple[int, ...]) -> None:
    assert parse_years(text, 2017, 2024) == years


def test_parse_years_rejects_empty() -> None:
    with pytest.raises(UserInputError, match=r"^--years '' is not understood: write a year \(2020\)"):
        parse_years("", 2017, 2024)


def test_console_script_is_installed() -> None:
    script = Path(sys.executable).parent / "aef-pipeline"
    result = subprocess.run([str(script), "--version"], capture_output=True, text=True, check=True)
    assert result.stdout.startswith("aef-pipeline ")
