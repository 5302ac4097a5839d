"""Markdown tables from pandas DataFrames (without the optional `tabulate` dependency)."""

from __future__ import annotations

import pandas as pd


def to_markdown(df: pd.DataFrame, floatfmt: str = ".2f") -> str:
    """A GitHub Markdown table of df; floats formatted with `floatfmt`, NaN as a dash, `|` and
    line breaks inside cells escaped."""

    def cell(v) -> str:
        if isinstance(v, float):
            return "–" if pd.isna(v) else format(v, floatfmt)
        # a pipe or a line break inside a cell would break the table's structure
        return " ".join(str(v).split()).replace("|", "\\|")

    lines = ["| " + " | ".join(map(cell, df.columns)) + " |", "|" + "---|" * len(df.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines) + "\n"
