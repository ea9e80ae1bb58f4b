"""How the report shows a table: as a reader would write it, not as pandas dumps it.

No index column; a dash where a value does not apply (not NaN or None); whole numbers as whole
numbers with thousands separators (480, 2,500,000,000: not 480.0 or 2.5e+09); other numbers to
four significant digits, an exponent only below 0.001 and short (a learning rate: 1e-5); text
whole (pandas cuts a cell at 50 characters), left-aligned, numbers right-aligned (Jupyter's own
style aligns every cell right), a short cell on one line.
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
    mantissa, exponent = f"{value:.1e}".split("e")  # a learning rate, a tiny error: 1e-5, 1.2e-7
    return f"{mantissa.removesuffix('.0')}e{int(exponent)}"


def counted(n: int, noun: str) -> str:
    """``n`` and the noun in its number: 1 seed, 2 seeds."""
    return f"{n} {noun}{'s' * (n != 1)}"


def styled(rows: list[dict], caption: str = ""):
    """The rows as a pandas Styler: cells formatted by ``cell``, numbers right-aligned, no index,
    ``caption`` above; None for no rows (the caller says what is missing)."""
    import pandas as pd

    if not rows:
        return None
    columns = list(dict.fromkeys(key for row in rows for key in row))
    numeric = [c for c in columns if all(isinstance(row.get(c), int | float | None) for row in rows)]
    frame = pd.DataFrame([{c: cell(row.get(c)) for c in columns} for row in rows], columns=columns)
    text = [c for c in columns if c not in numeric]
    short = [c for c in columns if max(len(cell(row.get(c))) for row in rows) <= 30]  # kept on one line
    table = frame.style.hide(axis="index").set_properties(subset=numeric, **{"text-align": "right"})
    table = table.set_properties(subset=text, **{"text-align": "left"})
    table = table.set_properties(subset=short, **{"white-space": "nowrap"})
    table = table.set_table_styles([{"selector": "th", "props": [("text-align", "left")]}])
    return table.set_caption(caption) if caption else table


def collapsed(summary: str, rows: list[dict], caption: str = "") -> str:
    """HTML: the table folded under a one-line ``summary`` a reader can open."""
    table = styled(rows, caption)
    return f"<details><summary>{summary}</summary>\n{table.to_html() if table is not None else ''}</details>"
