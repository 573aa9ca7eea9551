"""The comparison benchmark's quick mode: every method fills its cell, cells are stored
as they finish, and a re-run trains nothing."""

from __future__ import annotations

import json

import pytest

from tridim.bench.compare import METHODS
from tridim.cli import main


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("compare")
    assert main(["bench", "compare", "--quick", "--quiet", "--out", str(out)]) == 0
    return out


def test_quick_compare_fills_every_cell(quick_run):
    result = json.loads((quick_run / "result.json").read_text())
    cells = {c["method"]: c for c in result["cells"]}
    assert set(cells) == set(METHODS) - {"tridim-latency"} or set(cells) == set(METHODS)
    for method in ("tridim", "width-only", "tp-bn-scale", "tp-group-norm", "best-grid"):
        assert abs(cells[method]["macs_ratio"] - 0.5) <= 0.5 * 0.011, method
    assert cells["tp-bn-scale"]["before_final_epochs"] == 1  # its sparse training
    tridim_cell = cells["tridim"]
    assert cells["scratch"]["before_final_epochs"] == 8 + tridim_cell["before_final_epochs"] + 2
    assert len(cells["best-grid"]["grid"]) >= 9
    assert max(p["accuracy"] for p in cells["best-grid"]["grid"]) == cells["best-grid"]["accuracy"]
    for cell in cells.values():
        assert 0 <= cell["accuracy"] <= 1 and cell["speedup_b1"] > 0 and cell["params"] > 0
    tridim_row = next(r for r in result["summary"] if r["method"] == "tridim")
    assert tridim_row["predictor_rank_of_grid_best"][0] >= 1
    assert "| 0.5 | tridim |" in (quick_run / "summary.md").read_text()


def test_rerun_skips_finished_cells(quick_run, monkeypatch):
    import tridim.bench.compare as compare

    def no_training(*args, **kwargs):
        raise AssertionError("a finished cell was trained again")

    monkeypatch.setattr(compare, "train", no_training)
    monkeypatch.setattr(compare.tridim, "optimize", no_training)
    before = sorted(p.name for p in (quick_run / "cells").iterdir())
    assert main(["bench", "compare", "--quick", "--quiet", "--out", str(quick_run)]) == 0
    assert sorted(p.name for p in (quick_run / "cells").iterdir()) == before


def test_rerun_with_other_settings_is_refused(quick_run, capsys):
    settings = quick_run / "settings.json"
    stored = settings.read_text()
    settings.write_text(json.dumps({**json.loads(stored), "final_epochs": 5}))
    try:
        assert main(["bench", "compare", "--quick", "--quiet", "--out", str(quick_run)]) != 0
    finally:
        settings.write_text(stored)
    assert "other settings (final_epochs 5 -> 2)" in capsys.readouterr().err
