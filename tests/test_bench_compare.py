"""The comparison benchmark's quick mode: every method fills its cell, cells are stored
as they finish, and a re-run trains nothing; the base trains until val accuracy
plateaus, and a kill during that training loses at most one epoch."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tridim.bench.compare import METHODS, plateau_schedule, run_compare_bench
from tridim.cli import build_parser, main
from tridim.cli.bench_compare import COMPARE_DEFAULTS, QUICK_COMPARE_DEFAULTS
from tridim.search.predictor import LowRankPolynomialRegressor


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
    base = result["base"]
    run = Path(tridim_cell["predictor"]).parent  # the final may go on from a refine trial
    trained = json.loads((run / "steps" / "final.json").read_text())["sample"]["epochs"]
    assert tridim_cell["final_epochs"] == trained
    assert cells["scratch"]["before_final_epochs"] == (
        base["epochs"] + tridim_cell["before_final_epochs"] + trained
    )
    assert len(cells["best-grid"]["grid"]) >= 9
    assert max(p["accuracy"] for p in cells["best-grid"]["grid"]) == cells["best-grid"]["accuracy"]
    for name in ("depth-only", "width-only", "resolution-only", "tridim"):
        assert cells[name]["params"] < base["params"] or cells[name]["macs_ratio"] < 0.6, name
    tridim_row = next(r for r in result["summary"] if r["method"] == "tridim")
    grid, best = cells["best-grid"], cells["best-grid"]["accuracy"]
    assert tridim_row["regret_vs_grid"] == pytest.approx(best - tridim_cell["accuracy"])
    # the rank the table reports is where tridim's predictor puts the grid's measured best
    predictor = LowRankPolynomialRegressor.load(tridim_cell["predictor"])
    triples = [[p["triple"][k] for k in "dwr"] for p in grid["grid"]]
    scores = predictor.predict(triples)
    best_index = [p["accuracy"] for p in grid["grid"]].index(best)
    order = sorted(range(len(scores)), key=lambda i: -scores[i])
    assert tridim_row["predictor_rank_of_grid_best"] == [order.index(best_index) + 1]
    assert "| 0.5 | tridim |" in (quick_run / "summary.md").read_text()


def test_quick_base_records_its_plateau_curve(quick_run):
    result = json.loads((quick_run / "result.json").read_text())
    base = json.loads((quick_run / "base.json").read_text())
    assert result["base"] == base and result["config"]["base_epochs"] == "plateau"
    curve = base["curve"]
    assert 1 <= base["epochs"] == len(curve) <= 8  # --quick: patience 1, at most 8 epochs
    assert [point["epoch"] for point in curve] == list(range(1, len(curve) + 1))
    accuracies = [point["val_accuracy"] for point in curve]
    assert all(0 <= a <= 1 for a in accuracies) and 0 <= base["accuracy"] <= 1
    # every epoch was trained at the lr the schedule gives for the epochs before it
    lrs = [plateau_schedule(accuracies[:i], patience=1, max_epochs=8) for i in range(len(curve))]
    assert [point["lr"] for point in curve] == lrs and lrs[0] == 0.05
    assert base["stopped"] in ("plateau", "max_base_epochs") and base["params"] > 0
    summary = (quick_run / "summary.md").read_text()
    assert f"base model: {base['epochs']} epochs" in summary


def test_plateau_schedule_decays_twice_then_stops():
    # no plateau yet: the starting lr
    assert plateau_schedule([]) == 0.05
    assert plateau_schedule([0.5, 0.6, 0.7, 0.8]) == 0.05
    assert plateau_schedule([0.5, 0.5, 0.5]) == 0.05  # 2 stale epochs < patience 3
    # patience stale epochs: divide by 10; gains not above min_delta are stale
    assert plateau_schedule([0.5, 0.5, 0.5, 0.5]) == 0.005
    assert plateau_schedule([0.5, 0.505, 0.509, 0.5095], min_delta=0.01) == 0.005
    assert plateau_schedule([0.5, 0.52, 0.509, 0.5095], min_delta=0.01) == 0.05
    # the count restarts after a division; the best stays the best over every lr
    assert plateau_schedule([0.5, 0.4], patience=1) == 0.005
    assert plateau_schedule([0.5, 0.4, 0.45], patience=1) == 0.0005
    assert plateau_schedule([0.5, 0.4, 0.6], patience=1) == 0.005
    assert plateau_schedule([0.5, 0.4, 0.6, 0.7], patience=1) == 0.005
    # the plateau after the second division stops
    assert plateau_schedule([0.5, 0.4, 0.4], patience=1) == 0.0005
    assert plateau_schedule([0.5, 0.4, 0.4, 0.4], patience=1) is None
    assert plateau_schedule([0.5] * 9) == 0.0005
    assert plateau_schedule([0.5] * 10) is None
    # and so does max_epochs, plateau or not
    assert plateau_schedule([0.1, 0.2, 0.3], max_epochs=3) is None
    assert plateau_schedule([0.1, 0.2, 0.3], max_epochs=4) == 0.05


def test_base_epochs_option_takes_a_number_or_plateau(capsys):
    parse = build_parser().parse_args
    assert parse(["bench", "compare"]).base_epochs is None  # the mode's default applies
    assert COMPARE_DEFAULTS["base_epochs"] == QUICK_COMPARE_DEFAULTS["base_epochs"] == "plateau"
    assert parse(["bench", "compare", "--base-epochs", "15"]).base_epochs == 15
    with pytest.raises(SystemExit):
        parse(["bench", "compare", "--base-epochs", "often"])
    assert "expected an integer >= 0 or 'plateau'" in capsys.readouterr().err


def _base_only(out, **options):
    """Only the base model: min_delta 1 makes every epoch after the first stale."""
    return run_compare_bench(
        "digits",
        out=out,
        methods=(),
        base_patience=1,
        base_min_delta=1.0,
        subset={"train": 256, "val": 64, "test": 64},
        quiet=True,
        **options,
    )["base"]


def test_plateau_base_decays_and_a_kill_loses_at_most_one_epoch(tmp_path, monkeypatch):
    import tridim.bench.compare as compare

    whole = _base_only(tmp_path / "whole")
    # epoch 1 improves, 2 is stale (lr / 10), 3 is stale (lr / 10), 4 is stale: stop
    assert whole["epochs"] == len(whole["curve"]) == 4 and whole["stopped"] == "plateau"
    assert [point["lr"] for point in whole["curve"]] == [0.05, 0.05, 0.005, 0.0005]
    assert json.loads((tmp_path / "whole" / "base-curve.json").read_text()) == whole["curve"]

    real_train, calls = compare.train, []

    def killed_at_third_epoch(*args, **kwargs):
        calls.append(args[2])
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_train(*args, **kwargs)

    monkeypatch.setattr(compare, "train", killed_at_third_epoch)
    with pytest.raises(KeyboardInterrupt):
        _base_only(tmp_path / "killed")
    calls.clear()
    resumed = _base_only(tmp_path / "killed")
    assert calls == [3, 4]  # the two finished epochs were not trained again
    assert resumed["curve"] == whole["curve"] and resumed["accuracy"] == whole["accuracy"]


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


def test_options_given_with_quick_win_over_its_defaults(monkeypatch, tmp_path):
    import tridim.bench.compare as compare

    seen = {}

    def record(data, model, **options):
        seen.update(options, data=data)
        raise SystemExit(0)

    monkeypatch.setattr(compare, "run_compare_bench", record)
    arguments = ["bench", "compare", "--quick", "--out", str(tmp_path)]
    with pytest.raises(SystemExit):
        main([*arguments, "--data", "fashion-mnist", "--targets", "0.3", "--final-epochs", "4"])
    assert seen["data"] == "fashion-mnist"
    assert seen["targets"] == (0.3,) and seen["final_epochs"] == 4
    assert seen["seeds"] == 1 and seen["rounds"] == 1  # --quick's, where none was given
    with pytest.raises(SystemExit):
        main([*arguments, "--train-subset", "500"])
    assert seen["subset"]["train"] == 500 and seen["targets"] == (0.5,)
