"""A new user's first hour (issue 12): each finding, as a user meets it, stays fixed."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import torch
from conftest import randomise_batchnorm

import tridim
from tridim.cli import main
from tridim.run.store import RunStore
from tridim.search.samples import read_samples
from tridim.training import models

ROOT = Path(__file__).resolve().parent.parent


def _small_run(base_model, tiny, workdir):
    """The module's optimize run: small, and the same settings every time it is called."""
    return tridim.optimize(
        base_model,
        tiny,
        0.5,
        workdir=workdir,
        rounds=2,
        epochs_per_step=1,
        final_epochs=1,
        refine=0,
        quiet=True,
        latency_repeats=3,
        latency_batch=8,
        base_training_epochs=3,  # conftest's base_model
    )


@pytest.fixture(scope="module")
def fitted_run(tiny, base_model, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("run")
    return workdir, _small_run(base_model, tiny, workdir)


def _refuse_training(*args, **kwargs):
    raise AssertionError("trained where nothing should train")


def _no_training(monkeypatch):
    """Make any training fail loudly: the call under test must refuse before it."""
    monkeypatch.setattr("tridim.training.train.train", _refuse_training)
    monkeypatch.setattr("tridim.training.recipe.train", _refuse_training)
    monkeypatch.setattr("tridim.training.train._run_epochs", _refuse_training)


# ---------------------------------------------------------------------- 1. predictor reuse


def test_reused_predictor_refines_on_its_own_samples_in_a_fresh_workdir(
    tiny, base_model, fitted_run, tmp_path
):
    predictor = tridim.LowRankPolynomialRegressor.load(fitted_run[0] / "predictor.json")
    result = tridim.optimize(
        base_model,
        tiny,
        0.3,
        workdir=tmp_path,
        predictor=predictor,
        epochs_per_step=1,
        final_epochs=0,
        refine=1,
        quiet=True,
        latency_repeats=2,
        latency_batch=8,
    )
    # refit on the predictor's 7 samples plus the refine sample, not on the refine alone
    assert result.report["n_samples"] == len(predictor.y_train_) + 1
    assert abs(result.macs_ratio - 0.3) <= 0.01 * 0.3
    assert result.report["settings"]["reused_predictor"] is True


def test_budget_outside_the_reused_predictor_is_refused_before_training(
    tiny, base_model, fitted_run, tmp_path, monkeypatch
):
    predictor = tridim.LowRankPolynomialRegressor.load(fitted_run[0] / "predictor.json")
    _no_training(monkeypatch)
    with pytest.raises(
        ValueError,
        match=r"outside what the reused predictor covers.*spanning FLOPs ratios 0\.1\d+ to 1\.0000",
    ):
        tridim.optimize(base_model, tiny, 0.05, workdir=tmp_path / "w", predictor=predictor)
    assert not (tmp_path / "w").exists()


# ---------------------------------------------------------------------- 2. realise rounding


def test_cli_solve_picks_the_triple_optimize_picked(fitted_run, capsys):
    """`tridim solve` on a run's predictor solves with the run's measured-MACs cost, so
    it prints the triple `optimize` chose, not the d*w^2*r^2 optimum."""
    workdir, result = fitted_run
    assert main(["solve", str(workdir / "predictor.json"), "--target", "0.5", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["cost"] == "the run's measured macs (cost.json)"
    solved = [printed["triple"][k] for k in "dwr"]
    assert solved == pytest.approx(list(result.solution.triple.as_tuple()), abs=1e-6)


def test_realise_rounds_depth_and_resolution_so_width_can_still_meet_the_budget(digits):
    model = randomise_batchnorm(models.build("resnet20", 10, 1)).eval()
    # 6.46 of 9 blocks -> 6, 13.3 px -> 13: (6/9) * (13/16)^2 = 0.44 < 0.5 on their own
    pruned, plan = tridim.realise(
        model,
        tridim.Triple(0.718, 1.0, 0.834),
        input_size=(1, 16, 16),
        data=digits,
        target_flops_ratio=0.5,
    )
    assert abs(plan.macs_ratio - 0.5) <= 0.01 * 0.5
    assert tridim.count_macs(pruned, (1, 16, 16)) == plan.macs
    assert plan.requested == tridim.Triple(0.718, 1.0, 0.834)  # what was asked stays on record


def test_report_clips_the_prediction_and_says_what_it_means(fitted_run):
    report = fitted_run[1].report
    assert 0.0 <= report["predicted_accuracy"] <= 1.0
    assert {"raw", "clipped", "inside_sampled_box", "meaning"} <= set(report["prediction"])
    markdown = (fitted_run[0] / "report.md").read_text()
    assert "predicted accuracy (validation)" in markdown and "test split" in markdown


# ---------------------------------------------------------------------- 3. checks first


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"target_flops_ratio": "0.5"}, "must be a number"),
        ({"criterion": "nonsense"}, "criterion must be auto or one of"),
        ({"rounds": 0}, "rounds must be a positive integer"),
        ({"epochs_per_step": -1}, "epochs_per_step must be a non-negative integer"),
        ({"final_epochs": 1.5}, "final_epochs must be an integer"),
        ({"refine": -1}, "refine must be a non-negative integer"),
    ],
)
def test_bad_arguments_fail_before_any_work_and_write_nothing(
    tiny, base_model, tmp_path, monkeypatch, overrides, message
):
    _no_training(monkeypatch)
    arguments = {"target_flops_ratio": 0.5, **overrides}
    with pytest.raises(ValueError, match=message):
        tridim.optimize(base_model, tiny, workdir=tmp_path / "w", quiet=True, **arguments)
    assert not (tmp_path / "w").exists()


def test_cli_refuses_a_bad_target_within_seconds_and_writes_nothing(tmp_path, capsys):
    started = time.perf_counter()
    status = main(["optimize", "--target", "1.5", "--workdir", str(tmp_path / "w")])
    assert status == 2 and time.perf_counter() - started < 30
    assert "target_flops_ratio must be in (0, 1], got 1.5" in capsys.readouterr().err
    assert not (tmp_path / "w").exists()


def test_cli_names_the_differing_setting_before_training(fitted_run, tmp_path, capsys):
    store = fitted_run[0]
    status = main(["optimize", "--workdir", str(store), "--criterion", "l1", "--rounds", "2"])
    error = capsys.readouterr().err
    assert status == 2 and "settings.criterion" in error and "--force" in error
    assert not (store / "base").exists()  # the refusal came before training a base model


def test_force_deletes_the_run_and_nothing_else(fitted_run, tmp_path):
    folder = tmp_path / "project"
    shutil.copytree(fitted_run[0], folder)
    (folder / "index.html").write_text("<p>the user's own page</p>")
    (folder / "assets").mkdir()
    (folder / "assets" / "logo.svg").write_text("<svg/>")
    assert len(list(folder.iterdir())) > 4  # the run wrote its own files beside them
    RunStore(folder).clear()
    assert sorted(p.name for p in folder.iterdir()) == ["assets", "index.html"]
    assert (folder / "assets" / "logo.svg").is_file()
    RunStore(fitted_run[0]).check({})  # the original run is untouched
    only_run = tmp_path / "only-run"
    shutil.copytree(fitted_run[0], only_run)
    RunStore(only_run).clear()
    assert not only_run.exists()


def test_force_refuses_a_folder_whose_manifest_is_not_tridims(tmp_path, capsys):
    web = tmp_path / "web"
    web.mkdir()
    (web / "manifest.json").write_text(json.dumps({"name": "My app", "start_url": "/"}))
    (web / "index.html").write_text("<p>hello</p>")
    status = main(["optimize", "--workdir", str(web), "--force", "--target", "0.5"])
    assert status == 2
    assert "not a tridim run's manifest" in capsys.readouterr().err
    assert sorted(p.name for p in web.iterdir()) == ["index.html", "manifest.json"]


def test_a_base_model_cached_on_other_data_is_refused(fitted_run, tmp_path, capsys):
    """A ResNet-20 trained on Fashion-MNIST fits a digits run's shapes: only the data it
    was trained on, stored with it, can tell that it must not serve this run."""
    from tridim.training.train import save_checkpoint

    old = tmp_path / "old-run"
    old.mkdir()
    shutil.copy(fitted_run[0] / "predictor.json", old / "predictor.json")
    fashion = {"name": "fashion-mnist", "input_shape": [1, 28, 28], "num_classes": 10}
    save_checkpoint(
        old / "base" / "resnet20-e1-s0.pt", models.build("resnet20", 10, 1), data=fashion
    )
    arguments = ["optimize", "--predictor", str(old / "predictor.json"), "--base-epochs", "1"]
    status = main([*arguments, "--target", "0.5", "--workdir", str(tmp_path / "new")])
    assert status == 2
    assert "was trained on fashion-mnist (1, 28, 28), not on this run's digits" in (
        capsys.readouterr().err
    )


# ---------------------------------------------------------------------- 4. no tracebacks


def _cli_error(arguments: list[str], capsys) -> str:
    status = main(arguments)
    captured = capsys.readouterr()
    assert status == 2, captured
    assert "Traceback" not in captured.err
    return captured.err.strip()


def test_a_bug_shows_its_traceback_not_a_one_line_user_error(monkeypatch, tmp_path, capsys):
    """A ValueError from deep inside a library is a case tridim failed to check: hiding it
    as a one-line 'error:' would send the user hunting for a mistake they did not make."""
    import numpy as np

    def buggy_load(path):
        return np.reshape(np.arange(6), (4, 4))  # numpy raises the ValueError

    monkeypatch.setattr("tridim.search.predictor.LowRankPolynomialRegressor.load", buggy_load)
    with pytest.raises(ValueError, match="cannot reshape"):
        main(["solve", str(tmp_path / "predictor.json"), "--target", "0.5"])
    assert "internal error" in capsys.readouterr().err
    monkeypatch.undo()  # the same command's own check of the user's input stays one line
    assert main(["solve", str(tmp_path / "missing.json"), "--target", "1.5"]) == 2


def test_cli_user_errors_are_one_line(tmp_path, capsys):
    notes = tmp_path / "notes.txt"
    notes.write_text("not weights\n")
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    assert "not a weights-only PyTorch state dict" in _cli_error(
        ["optimize", "--weights", str(notes), "--workdir", str(tmp_path / "w")], capsys
    )
    assert "is a file" in _cli_error(["optimize", "--workdir", str(a_file)], capsys)
    assert "--size is for digits only" in _cli_error(
        ["info", "--data", "fashion-mnist", "--data-root", str(tmp_path), "--size", "32"], capsys
    )
    assert "digits takes no option root" in _cli_error(
        ["info", "--data", "digits", "--data-root", str(tmp_path)], capsys
    )


def test_cli_report_plots_into_a_file_is_refused(fitted_run, tmp_path, capsys):
    a_file = tmp_path / "figures.png"
    a_file.write_text("x")
    message = _cli_error(["report", str(fitted_run[0]), "--plots", str(a_file)], capsys)
    assert "is a file" in message


def test_weights_of_another_model_name_what_does_not_fit(tmp_path, capsys):
    weights = tmp_path / "resnet32.pt"
    torch.save(models.build("resnet32", 10, 1).state_dict(), weights)
    message = _cli_error(
        ["optimize", "--weights", str(weights), "--workdir", str(tmp_path / "w")], capsys
    )
    assert "does not fit resnet20" in message and "unexpected ['layer1.3" in message


# ---------------------------------------------------------------------- 5. finished runs


def test_latency_is_reported_with_its_spread_and_the_state_it_was_timed_in(fitted_run):
    report = fitted_run[1].report
    markdown = (fitted_run[0] / "report.md").read_text()
    for key, before in report["latency_ms"]["before"].items():
        after = report["latency_ms"]["after"][key]
        # a median of per-round ratios: near the ratio of the overall medians, not equal
        assert report["speedup"][key] == pytest.approx(before / after, rel=0.2)
        (q1, q3), (p1, p3) = (report["latency_spread_ms"][s][key] for s in ("before", "after"))
        assert f"interquartile {q1:.2f}-{q3:.2f} -> {p1:.2f}-{p3:.2f}" in markdown
        state = report["timing"][key]
        assert state["process"] == "subprocess" and state["allocator"] == "fixed-heap"
    batch = f"batch_{report['budget']['latency_batch']}"
    assert report["budget"]["measured_speedup"] == report["speedup"][batch]  # one timing
    assert (
        "| timed in | eager on cpu," in markdown and "subprocess, allocator fixed-heap" in markdown
    )
    unstable = [key for key, state in report["timing"].items() if not state["stable"]]
    assert len(report["warnings"]) == len(unstable)


def test_a_finished_run_run_again_reports_the_same_cost(
    fitted_run, tiny, base_model, tmp_path, monkeypatch
):
    """The compute record comes from what the run did, not from what this process happened
    to compute: run again on a finished folder, nothing trains and the cost is the same."""
    workdir, result = fitted_run
    again = tmp_path / "again"
    shutil.copytree(workdir, again)
    monkeypatch.setattr("tridim.training.recipe.train", _refuse_training)
    rerun = _small_run(base_model, tiny, again)
    for part in ("search", "total"):
        for key in ("base_trainings", "images", "trials"):
            assert rerun.report["compute"][part][key] == result.report["compute"][part][key]
    assert rerun.report["compute"]["stages"].keys() == result.report["compute"]["stages"].keys()


def test_the_report_says_what_the_run_cost_in_base_trainings(fitted_run, tiny):
    workdir, result = fitted_run
    compute = result.report["compute"]
    journal = read_samples(workdir / "samples.jsonl")
    trained = [s for s in journal if s.extra["epochs"] > 0]
    # the teacher's outputs were computed once, over the one training set: a third of a
    # base epoch, not a third per distilled epoch
    student = sum(s.extra["epochs"] * s.extra["macs_ratio"] for s in trained)
    expected = (student + 1 / 3) / 3
    assert compute["stages"]["teacher"]["images"] == len(tiny.train)
    assert compute["search"]["trials"] == len(trained) == 6  # two per dimension
    assert compute["search"]["base_trainings"] == pytest.approx(expected)
    assert compute["search"]["images"] == 7 * len(tiny.train)  # 6 epochs + the teacher pass
    assert compute["stages"]["final"]["epochs"] == 1 and compute["stages"]["refine"]["trials"] == 0
    assert compute["total"]["base_epochs"] > compute["search"]["base_epochs"]
    markdown = (workdir / "report.md").read_text()
    line = f"= {compute['search']['base_trainings']:.2f} base trainings"
    assert (
        "| compute before the final finetune | 6 trials, 6 epochs," in markdown and line in markdown
    )


# ---------------------------------------------------------------------- 6. progress


def test_quiet_runs_print_one_line_per_stage(tiny, base_model, tmp_path, capsys):
    tridim.collect(base_model, tiny, 0.5, workdir=tmp_path, rounds=1, epochs_per_step=0, quiet=True)
    err = capsys.readouterr().err
    assert "tridim: collect: 3 trial(s)" in err and "tridim: collect: done in" in err  # 3 axis


def test_epoch_bars_name_their_trial(tiny, capsys):
    from tridim.training.train import train

    model = models.build("resnet20", 10, 1)
    train(
        model, tiny.subset(train=64), 1, quiet=False, label="width 3/4", evaluate_each_epoch=False
    )
    assert "width 3/4, epoch 1/1" in capsys.readouterr().err


# ---------------------------------------------------------------------- 7. help


def test_help_lists_choices_and_defaults_and_bare_tridim_exits_2(capsys):
    assert main([]) == 2
    assert "usage: tridim" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["optimize", "--help"])
    text = re.sub(r"\s+", " ", capsys.readouterr().out)
    for expected in ("auto,bn_scale,taylor", "(default: auto", "(default: 2)", "(default: 0)"):
        assert expected in text
    assert "8 to 64 pixels" in text
    with pytest.raises(SystemExit):
        main(["--version"])
    assert capsys.readouterr().out.strip() == f"tridim {tridim.__version__}"


# ---------------------------------------------------------------------- the README


def _readme_command_block() -> str:
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", readme, flags=re.S)
    return next(b for b in blocks if "tridim export-onnx" in b)


def test_readme_command_line_block_runs_top_to_bottom(tmp_path):
    script = "set -euo pipefail\n" + _readme_command_block()
    done = subprocess.run(
        ["bash", "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=1500
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((tmp_path / "runs" / "t0.3" / "report.json").read_text())
    assert abs(report["macs_ratio"] - 0.3) <= 0.01 * 0.3
    reused = json.loads((tmp_path / "runs" / "resnet20-digits-t0.5" / "predictor.json").read_text())
    # the reused predictor's samples plus the refine samples of the new run
    assert report["n_samples"] == len(reused["train"]["y"]) + len(report["refinements"])
    assert 1 <= len(report["refinements"]) <= 3
    assert (tmp_path / "model.onnx").is_file()
    assert not (tmp_path / "runs" / "t0.3" / "base").exists()  # reused, not retrained
