"""Tests of tridim.plot (and the run it draws) on a small synthetic run folder."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("matplotlib")

from matplotlib.figure import Figure  # noqa: E402

from tridim import plot  # noqa: E402
from tridim.bench.predictor import baseline_models, compare_models  # noqa: E402
from tridim.run.report import pareto_rows, samples_table  # noqa: E402
from tridim.run.store import load_run  # noqa: E402
from tridim.search.predictor import LowRankPolynomialRegressor  # noqa: E402
from tridim.search.samples import Sample, append_sample  # noqa: E402
from tridim.search.space import Triple  # noqa: E402

TARGET = 0.5


def _accuracy(d: float, w: float, r: float) -> float:
    return 0.98 * (1 - 0.1 * (1 - d) ** 2) * (1 - 0.3 * (1 - w) ** 2) * (1 - 0.4 * (1 - r) ** 2)


def _axis_samples() -> list[Sample]:
    """The base model and 4 steps along each axis, down to the value meeting TARGET alone."""
    rng = np.random.default_rng(0)
    samples = [Sample(1.0, 1.0, 1.0, _accuracy(1, 1, 1), {"key": "base", "dimension": "base"})]
    lows = {"depth": TARGET, "width": TARGET**0.5, "resolution": TARGET**0.5}
    for axis, (dim, low) in enumerate(lows.items()):
        for step in range(1, 5):
            x = [1.0, 1.0, 1.0]
            x[axis] = 1 - step * (1 - low) / 4
            accuracy = _accuracy(*x) + rng.normal(0, 0.001)
            extra = {"key": f"{dim}:{step}", "dimension": dim, "step": step, "macs_ratio": 0.9}
            samples.append(Sample(*x, accuracy, extra))
    return samples


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A run directory like `tridim optimize` writes, with a cheap predictor."""
    path = tmp_path_factory.mktemp("run")
    samples = _axis_samples()
    for sample in samples:
        append_sample(path / "samples.jsonl", sample)
    X = np.array([[s.d, s.w, s.r] for s in samples])
    y = np.array([s.accuracy for s in samples])
    predictor = LowRankPolynomialRegressor(n_starts=2, n_bootstrap=20).fit(X, y)
    predictor.save(path / "predictor.json")
    report = {
        "target_flops_ratio": TARGET,
        "macs_ratio": 0.498,
        "triple": {"d": 0.875, "w": 0.85, "r": 0.8},
        "solved_triple": {"d": 0.85, "w": 0.86, "r": 0.82},
        "base_accuracy": 0.98,
        "accuracy": 0.96,
        "predicted_accuracy": 0.962,
        "refinements": [],
    }
    (path / "report.json").write_text(json.dumps(report))
    return path


@pytest.fixture(scope="module")
def run(run_dir):
    return load_run(run_dir)


@pytest.fixture(scope="module")
def loo(run):
    return run.predictor.loo_residuals()


def _cheap_models(seed: int = 0) -> dict:
    """baseline_models with fewer starts and restarts, for speed."""
    models = baseline_models(seed)
    for model in models.values():
        params = model.get_params()
        if "n_starts" in params:
            model.set_params(n_starts=1)
        if "n_restarts_optimizer" in params:
            model.set_params(n_restarts_optimizer=0)
    return models


def _two_models(seed: int = 0) -> dict:
    """Two quick models, for the figure-writing tests."""
    models = _cheap_models(seed)
    return {label: models[label] for label in ("MAP rank-1", "poly3 + RidgeCV")}


def _scatter_points(ax) -> int:
    return sum(len(c.get_offsets()) for c in ax.collections if hasattr(c, "get_offsets"))


# ---------------------------------------------------------------------- run


def test_load_run_reads_predictor_samples_and_report(run, run_dir):
    assert run.path == run_dir
    assert len(run.samples) == 13
    assert run.target == TARGET
    assert run.solved_triple == Triple(0.85, 0.86, 0.82)
    assert run.realised_triple == Triple(0.875, 0.85, 0.8)
    assert run.predictor.X_train_.shape == (13, 3)


def test_load_run_without_predictor_names_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="predictor.json"):
        load_run(tmp_path)


def test_load_run_falls_back_to_predictor_training_data(run_dir, tmp_path):
    (tmp_path / "predictor.json").write_text((run_dir / "predictor.json").read_text())
    run = load_run(tmp_path)
    assert len(run.samples) == 13 and run.report == {} and run.target is None


# ---------------------------------------------------------------------- figures


def test_plot_loo(run, loo):
    fig = plot.plot_loo(run.predictor, loo_residuals=loo)
    assert isinstance(fig, Figure)
    (ax,) = fig.axes
    # In-sample fit + one scatter per kind of sample (base, depth, width, resolution).
    assert len(ax.collections) == 5
    assert _scatter_points(ax) == 2 * 13
    assert len(ax.lines) == 1  # the diagonal
    assert "LOO RMSE" in ax.get_title()
    assert ax.get_legend() is not None


def test_plot_loo_draws_into_given_axes(run, loo):
    fig = Figure()
    ax = fig.add_subplot()
    assert plot.plot_loo(run.predictor, ax=ax, loo_residuals=loo) is fig
    assert fig.axes == [ax]


def test_plot_slices(run):
    fig = plot.plot_slices(run.predictor, run.samples, n_points=20)
    assert isinstance(fig, Figure)
    assert len(fig.axes) == 3
    for axis, ax in enumerate(fig.axes):
        assert len(ax.lines) == 1  # the fitted slice
        band, points = ax.collections
        assert len(points.get_offsets()) == 5  # 4 steps + the base model
        xs = ax.lines[0].get_xdata()
        assert xs[0] == pytest.approx(run.predictor.bounds_[0][axis]) and xs[-1] == 1.0
        assert "dwr"[axis] in ax.get_xlabel()
    assert fig.axes[0].get_legend() is not None


def test_plot_slices_skips_off_axis_samples(run):
    extra = Sample(0.8, 0.8, 0.8, 0.9)
    fig = plot.plot_slices(run.predictor, run.samples + [extra], n_points=10)
    assert [len(ax.collections[1].get_offsets()) for ax in fig.axes] == [5, 5, 5]
    with pytest.raises(ValueError, match="coverage"):
        plot.plot_slices(run.predictor, coverage=1.5)


def test_plot_iso_flops_marks_chosen_and_masks_infeasible(run):
    chosen = Triple(0.85, 0.86, 0.82)
    fig = plot.plot_iso_flops(run.predictor, TARGET, chosen, realised=run.realised_triple)
    assert isinstance(fig, Figure)
    ax, colourbar = fig.axes
    mesh = next(c for c in ax.collections if c.__class__.__name__ == "QuadMesh")
    values = mesh.get_array()
    assert np.ma.is_masked(values) and 0 < values.count() < values.size
    markers = [line for line in ax.lines if line.get_marker() in ("*", "X")]
    assert len(markers) == 2
    star = next(line for line in markers if line.get_marker() == "*")
    assert star.get_xdata()[0] == pytest.approx(chosen.w)
    assert star.get_ydata()[0] == pytest.approx(chosen.r)
    assert colourbar.get_ylabel() == "predicted accuracy"


def test_plot_iso_flops_solves_when_no_triple_given(run):
    from tridim.search.solver import solve

    solution = solve(run.predictor, TARGET)
    fig = plot.plot_iso_flops(run.predictor, TARGET, n_grid=31)
    star = next(line for line in fig.axes[0].lines if line.get_marker() == "*")
    assert star.get_xdata()[0] == pytest.approx(solution.triple.w)


def test_plot_residuals(run, loo):
    fig = plot.plot_residuals(run.predictor, loo_residuals=loo)
    assert isinstance(fig, Figure)
    left, right = fig.axes
    assert _scatter_points(left) == 13
    assert len(right.patches) == 2 * 13  # in-sample and leave-one-out bars
    assert len(right.get_xticklabels()) == 13
    assert right.get_legend() is not None


def test_compare_models_rows(run):
    models = _cheap_models()
    models["MAP rank-3 (too many parameters)"] = LowRankPolynomialRegressor(rank=3)
    rows = compare_models(run.samples, models=models)
    assert [row["model"] for row in rows] == list(models)
    for row in rows[:-1]:
        assert row["error"] is None and row["n_samples"] == 13
        assert 0 <= row["train_rmse"] and 0 < row["loo_rmse"] < 0.1
    assert rows[-1]["loo_rmse"] is None and "samples" in rows[-1]["error"]
    fig = plot.plot_model_comparison(rows)
    (ax,) = fig.axes
    assert len(ax.patches) == len(rows)
    assert "failed" in [text.get_text() for text in ax.texts]


def test_pareto_rows_and_plot(run):
    rows = pareto_rows(run.predictor, [0.9, 0.5, 0.01])
    assert [row["error"] is None for row in rows] == [True, True, False]
    assert rows[0]["predicted_accuracy"] > rows[1]["predicted_accuracy"]
    assert "below the cheapest point" in rows[2]["error"]
    fig = plot.plot_pareto(run.predictor, rows=rows, mark=0.5)
    left, right = fig.axes
    assert len(right.lines) == 3 + 1  # d, w, r and the marked budget
    assert list(left.lines[0].get_xdata()) == [0.5, 0.9]
    assert "0.01" in fig.get_suptitle()


def test_figures_are_not_kept_by_pyplot(run, loo):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    before = plt.get_fignums()
    plot.plot_loo(run.predictor, loo_residuals=loo)
    assert plt.get_fignums() == before


# ---------------------------------------------------------------------- report


def test_save_report_plots_writes_png_files(run_dir, tmp_path):
    out = tmp_path / "figures"
    rows = compare_models(load_run(run_dir).samples, models=_two_models())
    paths = plot.save_report_plots(run_dir, out, budgets=(0.9, 0.5), model_rows=rows, dpi=50)
    names = ["loo", "slices", "residuals", "models", "pareto", "iso_flops"]
    assert paths == [out / f"{name}.png" for name in names]
    for path in paths:
        assert path.stat().st_size > 1000
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_save_report_plots_defaults_to_run_plots_without_report(run_dir, tmp_path):
    for name in ("predictor.json", "samples.jsonl"):
        (tmp_path / name).write_text((run_dir / name).read_text())
    paths = plot.save_report_plots(load_run(tmp_path), budgets=(0.7,), dpi=40)
    assert [p.name for p in paths] == ["loo.png", "slices.png", "residuals.png", "pareto.png"]
    assert all(p.parent == tmp_path / "plots" and p.stat().st_size > 0 for p in paths)


# ---------------------------------------------------------------------- without matplotlib


def test_missing_matplotlib_gives_install_hint(run, monkeypatch):
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(ImportError, match=r"pip install tridim\[notebooks\]"):
        plot.plot_loo(run.predictor)
    with pytest.raises(ImportError, match=r"pip install tridim\[notebooks\]"):
        plot.save_report_plots(run.path)
    # The tables need no matplotlib.
    assert len(samples_table(run.samples)) == 13


def test_module_imports_without_matplotlib_or_torch():
    code = (
        "import sys; sys.modules['matplotlib'] = None\n"
        "import tridim.run.plot, tridim.run.report\n"
        "assert 'torch' not in sys.modules, 'tridim.plot imported torch'\n"
        "assert 'tridim.bench' not in sys.modules, 'the library imported the benchmark'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_plot_only_draws():
    for name in (
        "Run",
        "load_run",
        "format_table",
        "samples_table",
        "pareto_rows",
        "compare_models",
    ):
        assert name not in plot.__all__, name
        assert getattr(getattr(plot, name, None), "__module__", None) != "tridim.run.plot", name


@pytest.mark.parametrize("higher_is_better, name", [(True, "macro_f1"), (False, "-val_loss")])
def test_figures_of_a_users_score_name_it(run, loo, higher_is_better, name):
    from tridim.run.plot import _name_the_score

    score = {"loop": "UserLoop", "score": name.lstrip("-"), "higher_is_better": higher_is_better}
    fig = plot.plot_loo(run.predictor, loo_residuals=loo)
    _name_the_score(fig, score)
    labels = [t.get_text() for ax in fig.axes for t in (ax.xaxis.label, ax.yaxis.label)]
    assert f"measured {name}" in labels and not any("accuracy" in t for t in labels)
    own = plot.plot_loo(run.predictor, loo_residuals=loo)
    _name_the_score(own, {"loop": "OwnLoop", "score": "accuracy", "higher_is_better": True})
    assert "measured accuracy" in [ax.yaxis.label.get_text() for ax in own.axes]
