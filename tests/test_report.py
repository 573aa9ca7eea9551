"""Tests of tridim.report: the table renderer, the report summary and the row builders."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tridim.run.report import (
    as_sample,
    dimension_of,
    format_table,
    pareto_rows,
    render_report_markdown,
    samples_table,
)
from tridim.search.samples import Sample


def _report() -> dict:
    """A report dict shaped like the one `tridim optimize` writes."""
    return {
        "target_flops_ratio": 0.5,
        "macs_ratio": 0.5033152853767326,
        "triple": {"d": 0.7777777777777778, "w": 0.83125, "r": 1.0},
        "base_accuracy": 0.9916434540389972,
        "accuracy": 0.9916434540389972,
        "predicted_accuracy": 0.9559277796464096,
        "macs_before": 10130048,
        "macs_after": 5098608,
        "params_before": 272186,
        "params_after": 93889,
        "latency_ms": {
            "before": {"batch_1": 2.252088999739499, "batch_64": 15.333051000197884},
            "after": {"batch_1": 1.911982999445172, "batch_64": 12.760614000399073},
        },
        "speedup": {"batch_1": 1.1778812888990229, "batch_64": 1.2015919453184902},
        "seconds": {"collect": 20.80823430200053, "fit": 0.08698240099965915},
        "n_samples": 14,
    }


# ---------------------------------------------------------------------- format_table


def test_format_table_is_markdown():
    text = format_table([{"a": 0.123456, "b": None, "c": "x|y"}])
    assert text.splitlines() == ["| a | b | c |", "|---|---|---|", "| 0.1235 |  | x\\|y |"]


def test_format_table_columns_choose_and_order_a_subset():
    rows = [{"a": 1, "b": 2.0, "c": "x"}, {"a": 3, "c": "y"}]
    assert format_table(rows, ["c", "a"]).splitlines() == [
        "| c | a |",
        "|---|---|",
        "| x | 1 |",
        "| y | 3 |",
    ]
    # A column a row lacks is an empty cell, like None.
    assert format_table(rows, ["b"]).splitlines()[2:] == ["| 2.0000 |", "|  |"]


def test_format_table_none_cells_are_empty():
    text = format_table([{"model": "GP", "loo_rmse": None, "error": None}])
    assert text.splitlines()[-1] == "| GP |  |  |"


def test_format_table_float_format():
    row = {"f": 0.000012345, "g": 2.0, "n": math.nan, "np": np.float32(0.5), "i": 7, "b": True}
    assert format_table([row]).splitlines()[-1] == "| 0.0000 | 2.0000 | nan | 0.5000 | 7 | True |"
    text = format_table([row], float_format=".4g")
    assert text.splitlines()[-1] == "| 1.234e-05 | 2 | nan | 0.5 | 7 | True |"
    assert format_table([{"x": 1 / 3}], float_format=".2f").splitlines()[-1] == "| 0.33 |"


def test_format_table_without_rows_is_empty():
    assert format_table([]) == ""
    assert format_table(iter([]), ["a"]) == ""


# ---------------------------------------------------------------------- report markdown


def test_render_report_markdown():
    text = render_report_markdown(_report())
    lines = text.splitlines()
    assert lines[:4] == ["# tridim report", "", "| quantity | value |", "| --- | --- |"]
    assert "| MACs | 10,130,048 -> 5,098,608 |" in lines
    assert "| params | 272,186 -> 93,889 |" in lines
    assert "| target FLOPs ratio | 0.500 |" in lines
    assert "| measured MACs ratio | 0.503 |" in lines
    assert "| triple (d, w, r) | (0.778, 0.831, 1.000) |" in lines
    assert "| latency batch 1 (ms) | 2.25 -> 1.91 (1.18x) |" in lines
    assert "| latency batch 64 (ms) | 15.33 -> 12.76 (1.20x) |" in lines
    assert "| samples | 14 |" in lines
    assert "| seconds | collect 20.8, fit 0.1 |" in lines
    assert text.endswith(" |\n") and len(lines) == 4 + 12


def test_render_report_markdown_matches_the_committed_run():
    import json
    from pathlib import Path

    run = Path(__file__).resolve().parent.parent / "notebooks" / "run"
    if not (run / "report.md").is_file():
        pytest.skip("no committed run")
    report = json.loads((run / "report.json").read_text())
    assert render_report_markdown(report) == (run / "report.md").read_text()


# ---------------------------------------------------------------------- rows


def test_samples_table_rows():
    samples = [
        Sample(1.0, 1.0, 1.0, 0.98, {"key": "base", "dimension": "base"}),
        Sample(1.0, 0.8, 1.0, 0.95, {"key": "width:1", "step": 1, "macs_ratio": 0.66}),
    ]
    rows = samples_table(samples)
    assert list(rows[0]) == [
        "key",
        "dimension",
        "step",
        "d",
        "w",
        "r",
        "cost",
        "macs_ratio",
        "accuracy",
    ]
    assert rows[1]["dimension"] == "width" and rows[1]["step"] == 1
    assert rows[1]["cost"] == pytest.approx(0.64) and rows[1]["macs_ratio"] == 0.66


def test_samples_table_infers_dimension_and_accepts_dicts():
    rows = samples_table(
        [
            {"d": 1, "w": 1, "r": 1, "accuracy": 0.9},
            {"d": 1, "w": 1, "r": 0.5, "accuracy": 0.8},
            {"d": 0.5, "w": 0.5, "r": 1, "accuracy": 0.7},
        ]
    )
    assert [row["dimension"] for row in rows] == ["base", "resolution", "off-axis"]
    assert rows[0]["key"] is None and rows[0]["macs_ratio"] is None


def test_as_sample_and_dimension_of():
    assert as_sample({"d": 0.5, "w": 1, "r": 1, "accuracy": 0.9}) == Sample(0.5, 1, 1, 0.9)
    with pytest.raises(TypeError, match="Sample or a mapping"):
        as_sample((0.5, 1, 1, 0.9))
    assert dimension_of((1.0, 1.0 - 1e-12, 1.0)) == "base"
    assert dimension_of((0.5, 1.0, 1.0)) == "depth"


class _Linear:
    """A stand-in predictor: accuracy rises with every coordinate, box [0.5, 1]^3."""

    bounds_ = (np.full(3, 0.5), np.ones(3))

    def predict(self, X):
        X = np.asarray(X, dtype=float)
        return 0.5 + 0.1 * X.sum(axis=1)


def test_pareto_rows_keeps_unreachable_budgets_as_errors():
    rows = pareto_rows(_Linear(), [0.9, 0.01])
    assert [row["target"] for row in rows] == [0.9, 0.01]
    solved, unreachable = rows
    assert solved["error"] is None and solved["predicted_accuracy"] is not None
    assert solved["d"] * solved["w"] ** 2 * solved["r"] ** 2 == pytest.approx(0.9, rel=1e-4)
    assert unreachable["error"] and unreachable["d"] is None
    assert format_table(rows, ["target", "error"]).count("\n") == 3
