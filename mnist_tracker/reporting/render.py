"""The comparison table as text: an aligned table, Markdown, CSV or JSON.

``table`` and ``markdown`` round like the lab's table; ``csv`` and ``json`` keep full
precision for scripts.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Sequence

import pandas as pd

from ..constants import FORMATS
from ..errors import CompareError

# Output columns, in order, with the headers of the human formats (table, markdown).
HEADERS = {
    "model": "Model",
    "accuracy_pct": "Accuracy (%)",
    "f1_macro": "F1",
    "training_time_s": "Training Time (s)",
    "epochs": "Epochs",
    "batch_size": "Batch size",
    "lr": "LR",
    "precision": "Precision",
    "device": "Device",
    "run_name": "Run name",
    "run_id": "Run ID",
    "start_time": "Start time",
    "status": "Status",
}


def _cell(column: str, value) -> str:
    """A value as the human formats show it (the lab's rounding); empty for missing."""
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return ""
    if column in ("accuracy_pct", "training_time_s"):
        return f"{value:.2f}"
    if column == "f1_macro":
        return f"{value:.4f}"
    if column == "lr" or isinstance(value, float):
        return f"{value:g}"
    if column == "start_time":
        return str(value).replace("T", " ").removesuffix("Z")
    return str(value)


def human_rows(table: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    headers = [HEADERS.get(c, c) for c in table.columns]
    rows = [
        [_cell(c, v) for c, v in zip(table.columns, rec, strict=True)]
        for rec in table.itertuples(False)
    ]
    return headers, rows


def render_table(table: pd.DataFrame) -> str:
    """An aligned terminal table: text left-aligned, numbers right-aligned."""
    headers, rows = human_rows(table)
    numeric = [pd.api.types.is_numeric_dtype(table[c]) for c in table.columns]
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        parts = [
            c.rjust(w) if num else c.ljust(w)
            for c, w, num in zip(cells, widths, numeric, strict=True)
        ]
        return "  ".join(parts).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(headers), rule, *(line(r) for r in rows)])


def render_markdown(table: pd.DataFrame) -> str:
    """A GitHub Markdown table with the lab's header and rounding; ``|`` in text escaped."""
    headers, rows = human_rows(table)

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    numeric = [pd.api.types.is_numeric_dtype(table[c]) for c in table.columns]
    rule = "|" + "|".join("---:" if num else "---" for num in numeric) + "|"
    return "\n".join([line(headers), rule, *(line(r) for r in rows)])


def _records(table: pd.DataFrame) -> list[dict]:
    """Rows as plain Python values: floats at full precision, missing values as None."""
    records = []
    for rec in table.to_dict("records"):
        clean = {}
        for key, value in rec.items():
            if value is pd.NA or (isinstance(value, float) and math.isnan(value)):
                value = None
            elif hasattr(value, "item"):  # numpy scalar
                value = value.item()
            clean[key] = value
        records.append(clean)
    return records


def render_csv(table: pd.DataFrame) -> str:
    """CSV with the column keys as header; floats in full (``repr``) precision, missing empty."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(table.columns)
    for record in _records(table):
        writer.writerow(
            ["" if v is None else repr(v) if isinstance(v, float) else v for v in record.values()]
        )
    return buffer.getvalue().rstrip("\n")


def render_json(table: pd.DataFrame) -> str:
    """A JSON list of row objects keyed by column; full float precision; missing as null."""
    return json.dumps(_records(table), indent=2)


RENDERERS = {
    "table": render_table,
    "markdown": render_markdown,
    "csv": render_csv,
    "json": render_json,
}


def render(table: pd.DataFrame, fmt: str) -> str:
    """``table`` in one of ``FORMATS`` (no trailing newline)."""
    try:
        return RENDERERS[fmt](table)
    except KeyError:
        raise CompareError(f"unknown --format {fmt!r}; pass one of {', '.join(FORMATS)}") from None
