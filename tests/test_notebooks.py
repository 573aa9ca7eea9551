"""Execute the notebooks under notebooks/ against the committed run in notebooks/run/.

A cell that raises fails the test. The notebooks are executed on copies in memory; the
committed files (with their outputs) are not rewritten.
"""

from __future__ import annotations

from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("matplotlib")
pytest.importorskip("ipykernel")

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
RUN_DIR = NOTEBOOKS / "run"
CELL_TIMEOUT = 300

pytestmark = pytest.mark.skipif(
    not (RUN_DIR / "predictor.json").is_file(),
    reason=f"{RUN_DIR}/predictor.json does not exist yet: the notebooks read a committed "
    "run made by `tridim optimize --workdir notebooks/run`",
)


def _execute(name: str, folder: Path = NOTEBOOKS) -> nbformat.NotebookNode:
    """Execute a notebook with ``folder`` as its current directory."""
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
    client = nbclient.NotebookClient(
        notebook,
        timeout=CELL_TIMEOUT,
        kernel_name="python3",
        resources={"metadata": {"path": str(folder)}},
    )
    try:
        client.execute()
    except nbclient.exceptions.CellExecutionError as error:
        pytest.fail(f"{name}: a cell raised\n{error}", pytrace=False)
    return notebook


def _outputs(notebook: nbformat.NotebookNode) -> list[dict]:
    return [out for cell in notebook.cells if cell.cell_type == "code" for out in cell.outputs]


def _png_count(notebook: nbformat.NotebookNode) -> int:
    return sum("image/png" in out.get("data", {}) for out in _outputs(notebook))


@pytest.fixture(autouse=True)
def _default_run_dir(monkeypatch):
    # The notebooks honour $TRIDIM_RUN_DIR; test the committed run whatever the caller set.
    monkeypatch.setenv("TRIDIM_RUN_DIR", str(RUN_DIR))


def test_predictor_fits_notebook_runs():
    notebook = _execute("01_predictor_fits.ipynb")
    # Leave-one-out, slices, iso-FLOPs, residuals and the model comparison.
    assert _png_count(notebook) == 5
    assert not [out for out in _outputs(notebook) if out.get("output_type") == "error"]


def test_new_budgets_notebook_runs():
    assert (RUN_DIR / "base.pt").is_file(), (
        f"{RUN_DIR}/base.pt (the trained base model's state dict) is needed by "
        "02_new_budgets.ipynb to realise and finetune the 0.3 triple"
    )
    notebook = _execute("02_new_budgets.ipynb")
    assert _png_count(notebook) == 1  # the Pareto front
    text = "".join(
        out.get("text", "") + str(out.get("data", {}).get("text/markdown", ""))
        for out in _outputs(notebook)
    )
    assert "measured accuracy, test split" in text


def _run_in(name: str, folder: Path) -> tuple[nbformat.NotebookNode, str]:
    """Execute a self-contained notebook in ``folder``; also return its printed text."""
    notebook = _execute(name, folder)
    return notebook, "".join(out.get("text", "") for out in _outputs(notebook))


def test_own_training_loop_notebook_runs_where_it_is_started(tmp_path):
    import json

    _, text = _run_in("03_own_training_loop.ipynb", tmp_path)
    report = json.loads((tmp_path / "runs" / "own-loop" / "report.json").read_text())
    assert report["score"]["loop"] == "UserLoop"
    assert report["macs_ratio"] <= 0.51
    assert "reloaded model agrees: True" in text
    assert (tmp_path / "runs" / "own-loop-model" / "model.safetensors").is_file()


def test_own_metric_notebook_scores_by_macro_f1(tmp_path):
    import json

    _, text = _run_in("04_own_metric.ipynb", tmp_path)
    report = json.loads((tmp_path / "runs" / "own-metric" / "report.json").read_text())
    assert report["score"]["score"] == "macro_f1"
    assert report["macs_ratio"] <= 0.41
    assert "| pruned macro_f1 (evaluate()) |" in text
