"""How the report shows a table: as a reader would write it, not as pandas dumps it.

No index column; a dash where a value does not apply (not NaN or None); whole numbers as whole
numbers with thousands separators (480, 2,500,000,000: not 480.0 or 2.5e+09); other numbers to
four significant digits without exponents; text whole (pandas cuts a cell at 50 characters).
"""

import math

NOT_APPLICABLE = "–"


def cell(value) -> str:
    """One value as the report prints it."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return NOT_APPLICABLE
    if isinstance(value, bool):
        return "yes" if value else "no"
    if not isinstance(value, int | float):
        return str(value)
    if isinstance(value, int) or (value.is_integer() and abs(value) < 1e15):
        return f"{int(value):,}"
    if abs(value) >= 1e4:
        return f"{value:,.0f}"
    if abs(value) >= 1e-3:
        return f"{value:.4g}"
    return f"{value:.1e}"  # a tiny stderr or error: its magnitude is what matters


def styled(rows: list[dict], caption: str = ""):
    """The rows as a pandas Styler: cells formatted by ``cell``, numbers right-aligned, no index,
    ``caption`` above; None for no rows (the caller says what is missing)."""
    import pandas as pd

    if not rows:
        return None
    columns = list(dict.fromkeys(key for row in rows for key in row))
    numeric = [c for c in columns if all(isinstance(row.get(c), int | float | None) for row in rows)]
    frame = pd.DataFrame([{c: cell(row.get(c)) for c in columns} for row in rows], columns=columns)
    table = frame.style.hide(axis="index").set_properties(subset=numeric, **{"text-align": "right"})
    table = table.set_table_styles([{"selector": "th", "props": [("text-align", "left")]}])
    return table.set_caption(caption) if caption else table


def collapsed(summary: str, rows: list[dict], caption: str = "") -> str:
    """HTML: the table folded under a one-line ``summary`` a reader can open."""
    table = styled(rows, caption)
    return f"<details><summary>{summary}</summary>\n{table.to_html() if table is not None else ''}</details>"
