"""CSV cells that spreadsheets will not evaluate as formulas (CSV / formula injection).

A text cell that begins with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return is prefixed
with a single quote, as OWASP recommends. Numbers are left alone (``-0.5`` stays a number).

>>> cell("=HYPERLINK(\\"http://x\\")")
"'=HYPERLINK(\\"http://x\\")"
"""

from __future__ import annotations

from typing import Any

TRIGGERS = ("=", "+", "-", "@", "\t", "\r")


def cell(value: Any) -> Any:
    """``value`` with a leading ``'`` when it is text a spreadsheet would evaluate."""
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if isinstance(value, str) and value.startswith(TRIGGERS):
        return "'" + value
    return value


def frame(df):
    """A copy of the DataFrame ``df`` with every text cell, column name and index label made safe."""
    out = df.copy()
    for col in out.columns:
        if out[col].dtype == object or str(out[col].dtype) in ("string", "category"):
            out[col] = out[col].astype(object).map(cell)
    out.columns = [cell(str(c)) if not isinstance(c, str) else cell(c) for c in out.columns]
    if out.index.dtype == object:
        out.index = out.index.map(cell)
    return out


def to_csv(df, **kwargs) -> str:
    """``df.to_csv(**kwargs)`` with every user string made safe."""
    return frame(df).to_csv(**kwargs)
