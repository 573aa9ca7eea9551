"""``bench compare``'s methods, in the order its tables list them, and its summary: one row
per (method, target) over the seeds, the Markdown table, the plots."""

from __future__ import annotations

import os
import statistics
from pathlib import Path

__all__ = ["TRIDIM_VARIANTS", "METHODS", "summarise", "render_markdown", "plot"]

#: tridim's variants (the design study): optimize's options that differ from the run's.
TRIDIM_VARIANTS = {
    "tridim": {},
    "tridim-axis": {"design": 0},
    "tridim-proxy": {"design": 0, "sample_fraction": "auto"},
    "tridim-default": {"design": 0, "sample_fraction": "auto", "epochs_per_step": 2},
    "tridim-chain": {"collection": "chain", "design": 0},
    "tridim-bn-scale": {"criterion": "bn_scale"},
    "tridim-group-norm": {"criterion": "group_norm"},
}
METHODS = (
    *TRIDIM_VARIANTS,
    "tridim-latency",
    "depth-only",
    "width-only",
    "resolution-only",
    "tp-bn-scale",
    "tp-group-norm",
    "scratch",
    "best-grid",
)


def summarise(cells: list[dict]) -> list[dict]:
    """One row per (method, target): means and spreads over seeds, regret against the grid."""
    rows = []
    keys = sorted(
        {(c["target"], c["method"]) for c in cells}, key=lambda k: (-k[0], METHODS.index(k[1]))
    )
    for target, method in keys:
        group = [c for c in cells if c["target"] == target and c["method"] == method]
        accuracies = [c["accuracy"] for c in group]
        row = {
            "target": target,
            "method": method,
            "seeds": len(group),
            "accuracy": statistics.mean(accuracies),
            "spread": (max(accuracies) - min(accuracies)) if len(group) > 1 else 0.0,
        }
        for key in ("macs_ratio", "params", "speedup_b1", "before_final_epochs"):
            row[key] = statistics.mean(c[key] for c in group)
        batch_keys = [k for k in group[0] if k.startswith("speedup_b") and k != "speedup_b1"]
        row["speedup_batch"] = statistics.mean(c[batch_keys[0]] for c in group)
        row["before_final_seconds"] = statistics.mean(c["before_final_seconds"] for c in group)
        costs = [c.get("before_final_base_trainings") for c in group]
        row["before_final_base_trainings"] = (
            statistics.mean(costs) if costs and None not in costs else None
        )
        errors = [c["refine_abs_error"] for c in group if c.get("refine_abs_error") is not None]
        if errors:
            row["refine_abs_error"] = statistics.mean(errors)
        rows.append(row)
    _add_regret(rows, cells)
    return rows


def _add_regret(rows: list[dict], cells: list[dict]) -> None:
    """Each tridim variant's regret against the grid's best, and where its predictor ranked
    that best."""
    for row in rows:
        if row["method"] not in TRIDIM_VARIANTS:
            continue
        regrets, ranks = [], []
        for cell in cells:
            if cell["method"] != row["method"] or cell["target"] != row["target"]:
                continue
            grid = next(
                (
                    c
                    for c in cells
                    if c["method"] == "best-grid"
                    and c["target"] == cell["target"]
                    and c["seed"] == cell["seed"]
                ),
                None,
            )
            if grid is None:
                continue
            regrets.append(grid["accuracy"] - cell["accuracy"])
            ranks.append(_predicted_rank(cell["predictor"], grid["grid"]))
        row["regret_vs_grid"] = statistics.mean(regrets) if regrets else None
        row["predictor_rank_of_grid_best"] = ranks or None


def _predicted_rank(predictor_path: str, grid: list[dict]) -> int | None:
    """1 + how many grid triples the predictor scores above the grid's measured best."""
    from tridim.search.predictor import LowRankPolynomialRegressor

    if not Path(predictor_path).is_file() or not grid:
        return None
    predictor = LowRankPolynomialRegressor.load(predictor_path)
    triples = [[p["triple"]["d"], p["triple"]["w"], p["triple"]["r"]] for p in grid]
    predicted = predictor.predict(triples)
    best = max(range(len(grid)), key=lambda i: grid[i]["accuracy"])
    return 1 + sum(1 for value in predicted if value > predicted[best])


def render_markdown(result: dict) -> str:
    """The summary as a Markdown table."""
    batch = result["config"]["latency_batch"]
    lines = [
        f"| target | method | seeds | accuracy (mean) | spread | MACs ratio | params "
        f"| speed-up b1 | speed-up b{batch} | epochs before final | seconds before final "
        "| base trainings before final |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in result["summary"]:
        cost = row.get("before_final_base_trainings")
        lines.append(
            f"| {row['target']:g} | {row['method']} | {row['seeds']} | {row['accuracy']:.4f} "
            f"| {row['spread']:.4f} | {row['macs_ratio']:.3f} | {row['params']:,.0f} "
            f"| {row['speedup_b1']:.2f}x | {row['speedup_batch']:.2f}x "
            f"| {row['before_final_epochs']:.3g} | {row['before_final_seconds']:.0f} "
            f"| {'' if cost is None else format(cost, '.2f')} |"
        )
    base = result["base"]
    line = f"base model: {base['epochs']} epochs"
    if base.get("curve"):
        last = base["curve"][-1]
        line += f" (last lr {last['lr']:g}), final val accuracy {last['val_accuracy']:.4f}"
    lines += ["", f"{line}, test accuracy {base['accuracy']:.4f}"]
    regrets = [r for r in result["summary"] if r.get("regret_vs_grid") is not None]
    for row in regrets:
        lines.append("")
        error = row.get("refine_abs_error")
        lines.append(
            f"target {row['target']:g}: {row['method']}'s regret against the best grid triple "
            f"{row['regret_vs_grid']:+.4f}; its predictor ranked that triple "
            f"{row['predictor_rank_of_grid_best']} (1 = first)"
            + ("" if error is None else f"; mean |predicted - measured| at refine {error:.4f}")
        )
    return "\n".join(lines) + "\n"


def plot(result: dict, folder: str | os.PathLike) -> list[Path]:
    """Accuracy against MACs ratio and against measured speed-up (PNG; needs matplotlib)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    batch = result["config"]["latency_batch"]
    paths = []
    for key, label in (("macs_ratio", "MACs ratio"), ("speedup_batch", f"speed-up, batch {batch}")):
        figure, axes = plt.subplots(figsize=(6, 4))
        for index, method in enumerate(METHODS):
            rows = [r for r in result["summary"] if r["method"] == method]
            if rows:  # more methods than colours: the marker tells them apart
                axes.scatter(
                    [r[key] for r in rows],
                    [r["accuracy"] for r in rows],
                    label=method,
                    marker="os^Dv"[index % 5],
                )
        axes.set_xlabel(label)
        axes.set_ylabel("test accuracy")
        axes.legend(fontsize=7)
        path = folder / f"accuracy-vs-{key.replace('_', '-')}.png"
        figure.tight_layout()
        figure.savefig(path, dpi=120)
        plt.close(figure)
        paths.append(path)
    return paths
