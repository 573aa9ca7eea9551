"""Tables of a run: the report as Markdown, the samples, the Pareto rows.

:func:`format_table` is the one table renderer of tridim: notebooks, ``tridim report``
and the command line all print their rows through it. The row builders
(:func:`samples_table`, :func:`pareto_rows`) return plain dicts, so a table can also be
handed to pandas or written as JSON.

This module imports neither torch nor matplotlib.

Examples
--------
>>> print(format_table([{"model": "MAP rank-1", "loo_rmse": 0.0143, "error": None}]))
| model | loo_rmse | error |
|---|---|---|
| MAP rank-1 | 0.0143 |  |
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from tridim.search.samples import Sample
from tridim.search.solver import solve
from tridim.search.space import flops_cost

__all__ = [
    "markdown_table",
    "format_table",
    "render_report_markdown",
    "samples_table",
    "pareto_rows",
    "as_sample",
    "dimension_of",
    "ON_AXIS_TOL",
]

#: A coordinate within this of 1 counts as kept in full (on the axis).
ON_AXIS_TOL = 1e-9

_DIMENSIONS = ("depth", "width", "resolution")


# ---------------------------------------------------------------------- rendering


def format_table(
    rows: Iterable[Mapping[str, Any]],
    columns: Sequence[str] | None = None,
    *,
    float_format: str = ".4f",
) -> str:
    """Render dict rows as a Markdown table.

    Parameters
    ----------
    rows : iterable of mappings
        E.g. from :func:`samples_table` or :func:`pareto_rows`. A row lacking a column
        gets an empty cell.
    columns : sequence of str, optional
        Columns to show, in order. Default: the keys of the first row.
    float_format : str, default=".4f"
        Format spec of float cells (``".4g"`` for 4 significant digits).

    Returns
    -------
    str
        The table, without a trailing newline; an empty string if there are no rows.
        None is shown as an empty cell and ``|`` in a value is escaped.
    """
    rows = list(rows)
    if not rows:
        return ""
    columns = list(columns) if columns is not None else list(rows[0])
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += [
        "| " + " | ".join(_cell(row.get(c), float_format) for c in columns) + " |" for row in rows
    ]
    return "\n".join(lines)


def markdown_table(rows: Sequence[dict], columns: Sequence[str] | None = None) -> str:
    """Rows as a Markdown table, floats to 4 significant digits; ``(no rows)`` if empty.

    Parameters
    ----------
    rows : sequence of dict
        One dict per row.
    columns : sequence of str, optional
        The columns, in order (default: the keys of the rows).

    Returns
    -------
    str
        The table, or ``"(no rows)"``.
    """
    return format_table(rows, columns, float_format=".4g") or "(no rows)"


def _cell(value: Any, float_format: str) -> str:
    if value is None:
        return ""
    if isinstance(value, (float, np.floating)):
        return format(value, float_format)
    return str(value).replace("|", "\\|")


def render_report_markdown(report: dict) -> str:
    """A readable Markdown summary of a report dict (the ``report.md`` of a run).

    Parameters
    ----------
    report : dict
        As written to ``report.json`` by :func:`tridim.run.optimize`: needs ``triple``,
        ``latency_ms`` (``before`` / ``after``, with ``batch_1`` and one other batch),
        ``speedup``, ``target_flops_ratio``, ``macs_ratio``, ``base_accuracy``,
        ``accuracy``, ``predicted_accuracy``, ``macs_before`` / ``macs_after``,
        ``params_before`` / ``params_after``, ``n_samples`` and ``seconds``.

    Returns
    -------
    str
        A title and a two-column ``quantity | value`` table, ending with a newline.
    """
    lines = ["# tridim report", "", "| quantity | value |", "| --- | --- |"]
    lines += [f"| {name} | {value} |" for name, value in _report_rows(report)]
    lines += _notes(report)
    return "\n".join(lines) + "\n"


def _notes(report: dict) -> list[str]:
    """What the figures mean, and what to doubt (reports of tridim 0.1.0 have none)."""
    notes = []
    prediction = report.get("prediction")
    name = (report.get("score") or {}).get("score", "accuracy")
    measured = "validation accuracy" if name == "accuracy" else name
    if prediction:
        notes.append(f"- predicted {name}: {prediction['meaning']}.")
        if prediction.get("offset_at_refine") is not None:
            notes.append(
                f"- at the verified (refine) triple the measured {measured} was "
                f"{prediction['offset_at_refine']:+.4f} off the prediction."
            )
        if prediction.get("clipped"):
            notes.append(f"- the predictor gave {prediction['raw']:.4f}, clipped to [0, 1].")
        if not prediction.get("inside_sampled_box", True):
            notes.append("- the triple lies outside the sampled box: the prediction extrapolates.")
    notes += [f"- warning: {text}" for text in report.get("warnings", [])]
    return ["", *notes] if notes else []


def _report_rows(report: dict) -> list[tuple[str, str]]:
    t = report["triple"]
    lat = report["latency_ms"]
    batch_key = next((k for k in lat["before"] if k != "batch_1"), "batch_1")
    timed = report.get("timing", {}).get(batch_key)
    return [
        *_budget_rows(report),
        ("measured MACs ratio", f"{report['macs_ratio']:.3f}"),
        ("triple (d, w, r)", f"({t['d']:.3f}, {t['w']:.3f}, {t['r']:.3f})"),
        *_score_rows(report),
        ("MACs", f"{report['macs_before']:,} -> {report['macs_after']:,}"),
        ("params", f"{report['params_before']:,} -> {report['params_after']:,}"),
        ("latency batch 1 (ms)", _latency_cell(report, "batch_1")),
        (f"latency {batch_key.replace('_', ' ')} (ms)", _latency_cell(report, batch_key)),
        *([("timed in", describe_timing(timed))] if timed else []),
        *_compute_rows(report.get("compute")),
        ("samples", str(report["n_samples"])),
        ("seconds", ", ".join(f"{k} {v:.1f}" for k, v in report["seconds"].items())),
    ]


def _budget_rows(report: dict) -> list[tuple[str, str]]:
    """The budget asked for, and what was predicted and measured against it."""
    budget = report.get("budget")
    if budget is None:  # reports of tridim 0.1.0
        return [("target FLOPs ratio", f"{report['target_flops_ratio']:.3f}")]
    where = f"{budget['runtime']}, batch {budget['latency_batch']}"
    if budget["kind"] == "macs":
        rows = [("target FLOPs ratio", f"{budget['target_flops_ratio']:.3f}")]
    else:
        asked = (
            f"{budget['target_speedup']:g}x"
            if budget.get("target_speedup") is not None
            else f"{budget['target_latency_ms']:g} ms"
        )
        rows = [
            (f"latency budget ({where})", asked),
            ("predicted speed-up (latency table)", f"{budget['predicted_speedup']:.2f}x"),
        ]
    rows.append((f"measured speed-up ({where})", f"{budget['measured_speedup']:.2f}x"))
    if "analytic_flops_ratio" in report:
        rows.append(("analytic d·w²·r²", f"{report['analytic_flops_ratio']:.3f}"))
    return rows


def _score_rows(report: dict) -> list[tuple[str, str]]:
    """Base, pruned and predicted score: accuracy on the test split with tridim's loop,
    else the user's ``evaluate()`` (``report["score"]`` names it)."""
    score = report.get("score") or {"loop": "OwnLoop", "score": "accuracy"}
    if score["loop"] == "OwnLoop":
        where, predicted = " (test)", " (validation)" if report.get("prediction") else ""
    else:
        lower = "" if score.get("higher_is_better", True) else ", lower is better"
        where, predicted = f" (evaluate(){lower})", ""
    name = score["score"]
    return [
        (f"base {name}{where}", f"{report['base_accuracy']:.4f}"),
        (f"pruned {name}{where}", f"{report['accuracy']:.4f}"),
        (f"predicted {name}{predicted}", f"{report['predicted_accuracy']:.4f}"),
    ]


def _compute_rows(compute: dict | None) -> list[tuple[str, str]]:
    """The search's and the whole run's cost (reports before tridim 0.3 have none)."""
    if not compute:
        return []
    rows = []
    for key, label in (("search", "compute before the final finetune"), ("total", "compute")):
        cost = compute[key]
        text = (
            f"{cost['trials']} trials, {cost['epochs']} epochs, "
            + ("" if cost["images"] is None else f"{cost['images']:,} images, ")
            + f"{cost['seconds']:.0f} s; {cost['base_epochs']:.2f} base epochs"
        )
        if cost.get("base_trainings") is not None:
            text += f" = {cost['base_trainings']:.2f} base trainings"
        rows.append((label, text))
    return rows


def describe_timing(state: dict) -> str:
    """One line: where and how a timing was made (the ``state`` of :mod:`tridim.cost.timing`)."""
    text = (
        f"{state.get('runtime', '?')} on {state.get('device', '?')}, {state.get('threads')} "
        f"threads, {state.get('process', '?')}, allocator {state.get('allocator', '?')}"
    )
    if not state.get("stable", True):
        text += (
            f"; unstable: rounds spread {state['max_spread']:.0%} "
            f"after {state['attempts']} attempts"
        )
    return text


def _latency_cell(report: dict, batch_key: str) -> str:
    lat = report["latency_ms"]
    cell = (
        f"{lat['before'][batch_key]:.2f} -> {lat['after'][batch_key]:.2f} "
        f"({report['speedup'][batch_key]:.2f}x)"
    )
    spread = report.get("latency_spread_ms")
    if spread:
        before, after = spread["before"][batch_key], spread["after"][batch_key]
        cell += f"; interquartile {before[0]:.2f}-{before[1]:.2f} -> {after[0]:.2f}-{after[1]:.2f}"
    return cell


# ---------------------------------------------------------------------- samples


def as_sample(item: Sample | Mapping[str, Any]) -> Sample:
    """A :class:`~tridim.search.samples.Sample` from a Sample or a ``{d, w, r, accuracy}`` mapping.

    Raises
    ------
    TypeError
        If ``item`` is neither.
    """
    if isinstance(item, Sample):
        return item
    if isinstance(item, Mapping):
        return Sample.from_dict(dict(item))
    raise TypeError(f"expected a Sample or a mapping, got {type(item).__name__}")


def dimension_of(x: Sequence[float]) -> str:
    """Which dimension a point (d, w, r) reduces.

    Returns
    -------
    str
        ``base`` when none is below 1, the one reduced (``depth`` / ``width`` /
        ``resolution``), or ``off-axis`` when more than one is.
    """
    reduced = [i for i, v in enumerate(x) if v < 1 - ON_AXIS_TOL]
    if not reduced:
        return "base"
    return _DIMENSIONS[reduced[0]] if len(reduced) == 1 else "off-axis"


def samples_table(samples: Iterable[Sample | Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The samples as table rows (plain dicts, one per sample, in file order).

    Parameters
    ----------
    samples : iterable of Sample or mappings with keys d, w, r, accuracy

    Returns
    -------
    list of dict
        Keys ``key``, ``dimension``, ``step``, ``d``, ``w``, ``r``, ``cost``
        (the analytic :func:`~tridim.search.space.flops_cost`), ``macs_ratio`` (measured, if
        recorded, else None) and ``accuracy``. ``dimension`` is taken from the sample's
        record, else inferred from which coordinates are below 1.
    """
    return [_sample_row(as_sample(item)) for item in samples]


def _sample_row(sample: Sample) -> dict[str, Any]:
    extra = sample.extra
    return {
        "key": extra.get("key"),
        "dimension": extra.get("dimension", dimension_of((sample.d, sample.w, sample.r))),
        "step": extra.get("step"),
        "d": sample.d,
        "w": sample.w,
        "r": sample.r,
        "cost": flops_cost(sample.d, sample.w, sample.r),
        "macs_ratio": extra.get("macs_ratio"),
        "accuracy": sample.accuracy,
    }


# ---------------------------------------------------------------------- budgets


def pareto_rows(predictor: Any, budgets: Iterable[float]) -> list[dict[str, Any]]:
    """Solve for each budget and return one table row per budget.

    Budgets that cannot be met inside the predictor's box (below its cheapest sampled
    corner) are kept as rows with the solver's message in ``error`` instead of raising.

    Parameters
    ----------
    predictor : object with ``predict(X)`` and ``bounds_``
        Typically a fitted :class:`~tridim.search.predictor.LowRankPolynomialRegressor`.
    budgets : iterable of float
        FLOPs budgets in (0, 1].

    Returns
    -------
    list of dict
        Keys ``target``, ``d``, ``w``, ``r``, ``predicted_accuracy``, ``multiplier``
        and ``error`` (None when solved; the other values are None when not).
    """
    return [_pareto_row(predictor, float(budget)) for budget in budgets]


def _pareto_row(predictor: Any, target: float) -> dict[str, Any]:
    row: dict[str, Any] = {"target": target}
    try:
        solution = solve(predictor, target)
    except ValueError as error:
        row.update(d=None, w=None, r=None, predicted_accuracy=None, multiplier=None)
        row["error"] = str(error)
    else:
        row.update(solution.triple.to_dict())
        row["predicted_accuracy"] = solution.predicted_accuracy
        row["multiplier"] = solution.multiplier
        row["error"] = None
    return row
