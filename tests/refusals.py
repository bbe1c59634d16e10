"""The bad-input contract, checked one way everywhere: exit 2, one line naming the problem, and
no file under `folder` written or touched."""

from __future__ import annotations

from pathlib import Path

import pytest

from aef_pipeline.cli import main


def assert_refused(argv: list[str], phrase: str, folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = sorted((p, p.stat().st_mtime_ns) for p in folder.rglob("*"))
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert phrase in err[0]
    assert sorted((p, p.stat().st_mtime_ns) for p in folder.rglob("*")) == before  # nothing written or touched
