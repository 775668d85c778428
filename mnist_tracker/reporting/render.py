"""The comparison table as text: an aligned table, Markdown, CSV or JSON.

For people, ``table`` and ``markdown``: the lab's display names (``Deep CNN``), its rounding
(accuracy and time to 2 decimals, F1 to 4), text on one line (runs of whitespace in a run name,
newlines and tabs included, become one space; other control characters, such as a terminal's
escape sequences, show as escapes: ``\\x1b``).

For scripts, ``csv`` and ``json``: the column keys as names, ``model`` the registry key
(``deep_cnn``), text as logged, and numbers at full precision without float noise: 12
significant digits, more than any metric here carries, so 99.42999999999999 (0.9943 x 100 in
binary) is 99.43 while nothing a run measured is rounded; ``lr`` as logged (the param string
parsed); ``pretrained`` is true / false; missing values are empty / null, and so are infinite
ones (a diverged loss: JSON has no infinity), which the human formats show as ``inf``.

Markdown escapes what a renderer would take as markup: ``|`` (a cell's end) and ``<``, ``>``,
``&`` (inline HTML: a run named ``<img onerror=...>`` ran as HTML where Markdown is rendered).
CSV does the same for spreadsheets: a text cell that begins with ``=``, ``+``, ``-``, ``@``, a
tab or a carriage return gets a leading ``'`` (a run named ``=HYPERLINK(...)`` or
``=cmd|...`` is a formula to Excel and LibreOffice, run when a teammate opens the export);
numbers are never changed. JSON keeps every text as logged.
"""

from __future__ import annotations

import csv
import html
import io
import json
import math
import re
from collections.abc import Sequence

import pandas as pd

from ..constants import FORMATS
from ..errors import CompareError
from .compare import display_name

# Output columns, in order, with the headers of the human formats (table, markdown).
HEADERS = {
    "model": "Model",
    "accuracy_pct": "Accuracy (%)",
    "f1_macro": "F1",
    "training_time_s": "Training Time (s)",
    "epochs": "Epochs",
    "batch_size": "Batch size",
    "lr": "LR",
    "train_size": "Train images",
    "test_size": "Test images",
    "image_size": "Image size",
    "pretrained": "Pretrained",
    "precision": "Precision",
    "device": "Device",
    "run_name": "Run name",
    "run_id": "Run ID",
    "start_time": "Start time",
    "status": "Status",
    "registry": "Registry",
}

# csv and json: binary float noise goes (0.9943 * 100 = 99.42999999999999 -> 99.43), precision
# stays (a float's 15-17 digits, of which no metric here has more than 12 that mean anything).
SIGNIFICANT_DIGITS = 12
EXACT = {"lr"}
_WHITESPACE = re.compile(r"\s+")
# What a terminal would obey rather than show, after whitespace became spaces: the other C0 and
# C1 controls (ESC starts a sequence that recolours the screen, retitles the window or hides
# text; BEL, NUL, backspace) and the bidirectional overrides that reorder what follows.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def one_line(text: str) -> str:
    """``text`` as one line of plain characters: every run of whitespace (newlines, tabs) as
    one space, any other control character as its visible escape (``\\x1b``, ``\\u202e``)."""
    spaced = _WHITESPACE.sub(" ", text).strip()
    return _CONTROL.sub(lambda m: m[0].encode("unicode_escape").decode("ascii"), spaced)


def _cell(column: str, value) -> str:
    """A value as the human formats show it (the lab's rounding); empty for missing."""
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return ""
    if column == "model":
        return one_line(display_name(str(value)))
    if pd.api.types.is_bool(value):
        return "true" if value else "false"
    if column in ("accuracy_pct", "training_time_s"):
        return f"{value:.2f}"
    if column == "f1_macro":
        return f"{value:.4f}"
    if column == "lr" or isinstance(value, float):
        return f"{value:g}"
    if column == "start_time":
        return str(value).replace("T", " ").removesuffix("Z")
    return one_line(str(value))


def _numeric(table: pd.DataFrame) -> list[bool]:
    """Per column: right-aligned (numbers) or not (text, booleans)."""
    return [
        pd.api.types.is_numeric_dtype(table[c]) and not pd.api.types.is_bool_dtype(table[c])
        for c in table.columns
    ]


def human_rows(table: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    """The headers (``HEADERS``) and the cells of the human formats, every one on one line."""
    headers = [HEADERS.get(c, c) for c in table.columns]
    rows = [
        [_cell(c, v) for c, v in zip(table.columns, rec, strict=True)]
        for rec in table.itertuples(False)
    ]
    return headers, rows


def render_table(table: pd.DataFrame) -> str:
    """An aligned terminal table: text left-aligned, numbers right-aligned."""
    headers, rows = human_rows(table)
    numeric = _numeric(table)
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
    """A GitHub Markdown table with the lab's header and rounding; markup in text escaped."""
    headers, rows = human_rows(table)

    def line(cells: Sequence[str]) -> str:
        escaped = (html.escape(c, quote=False).replace("|", "\\|") for c in cells)
        return "| " + " | ".join(escaped) + " |"

    numeric = _numeric(table)
    rule = "|" + "|".join("---:" if num else "---" for num in numeric) + "|"
    return "\n".join([line(headers), rule, *(line(r) for r in rows)])


def script_number(column: str, value: float) -> float:
    """A float as csv and json carry it: ``SIGNIFICANT_DIGITS``, ``lr`` exactly as parsed."""
    if column in EXACT or not math.isfinite(value):
        return value
    return float(f"{value:.{SIGNIFICANT_DIGITS}g}")


def _records(table: pd.DataFrame) -> list[dict]:
    """Rows as plain Python values: floats rounded by ``script_number``, missing as None."""
    records = []
    for rec in table.to_dict("records"):
        clean = {}
        for key, value in rec.items():
            if value is pd.NA or (isinstance(value, float) and not math.isfinite(value)):
                value = None
            elif hasattr(value, "item"):  # numpy scalar
                value = value.item()
            if isinstance(value, float):
                value = script_number(key, value)
            clean[key] = value
        records.append(clean)
    return records


# What makes a spreadsheet read a cell as a formula (OWASP's list for CSV injection).
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _csv_cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f"'{value}" if value.startswith(_FORMULA_START) else value
    return repr(value) if isinstance(value, float) else str(value)


def render_csv(table: pd.DataFrame) -> str:
    """CSV with the column keys as header; the values of ``render_json``, missing empty."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(table.columns)
    for record in _records(table):
        writer.writerow([_csv_cell(v) for v in record.values()])
    return buffer.getvalue().rstrip("\n")


def render_json(table: pd.DataFrame) -> str:
    """A JSON list of row objects keyed by column (registry keys, rounded numbers, null)."""
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
