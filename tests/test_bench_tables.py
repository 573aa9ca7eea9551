"""Each benchmark formats the table the command line prints from its own JSON result:
the results kept in notebooks/figures/ (real runs) print a row per measured case."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import pytest

FIGURES = Path(__file__).resolve().parents[1] / "notebooks" / "figures"


def _table_rows(text: str) -> int:
    """Body rows of the Markdown tables in ``text``: each table's header line is the one
    above its ``|---`` rule."""
    lines = [line for line in text.splitlines() if line.startswith("|")]
    rules = sum(line.startswith("|---") for line in lines)
    return len(lines) - 2 * rules


@pytest.mark.parametrize(
    "module, file, part, rows",
    [
        ("allocator", "bench-allocator.json", None, lambda r: len(r["rows"])),
        ("channels", "bench-channels.json", None, lambda r: len(r["rows"])),
        ("parallel", "bench-parallel.json", "rounds_1", lambda r: len(r["seconds"])),
        ("speedup", "bench-speedup.json", None, lambda r: len(r["cells"])),
        ("proxy", "bench-proxy-digits.json", None, lambda r: len(r["runs"])),
    ],
)
def test_a_benchmark_prints_a_row_per_case_of_its_result(module, file, part, rows):
    result = json.loads((FIGURES / file).read_text())
    result = result[part] if part else result
    text = importlib.import_module(f"tridim.bench.{module}").format_table(result)
    assert _table_rows(text) == rows(result), text
