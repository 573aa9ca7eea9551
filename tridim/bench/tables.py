"""The benchmarks' tables: Markdown, floats to 4 significant digits."""

from __future__ import annotations

from collections.abc import Sequence

from tridim.run.report import format_table

__all__ = ["markdown_table"]


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
