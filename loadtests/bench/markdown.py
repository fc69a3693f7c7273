"""Numbers and tables as the report writes them."""

from __future__ import annotations


def fmt(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:,.1f}"


def table(head: list[str], rows: list[list[str]], align: str = "") -> list[str]:
    marks = [":---" if i == 0 else "---:" for i in range(len(head))]
    return [f"| {' | '.join(head)} |", f"|{'|'.join(align or m for m in marks)}|"] + [
        f"| {' | '.join(row)} |" for row in rows
    ]
