"""Bench results: plain-text tables for people, JSON for machines, a file when asked."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A right-aligned text table (the first column left-aligned)."""
    cells = [[str(h) for h in headers]] + [[_cell(v) for v in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = []
    for row in cells:
        lines.append("  ".join(value.ljust(width) if i == 0 else value.rjust(width)
                               for i, (value, width) in enumerate(zip(row, widths))))
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}"
    return str(value)


def format_machine(machine: dict[str, Any]) -> str:
    keys = ("cpu", "cpu_flags", "cpu_capability", "cpu_count", "torch_threads", "omp_wait_policy", "torch", "transformers", "cuda",
            "load_before", "load_after")
    return " ".join(f"{k}={_cell(machine[k])!r}" if k in ("cpu", "cpu_flags")
                    else f"{k}={_cell(machine[k])}" for k in keys if k in machine)


def emit(report: dict[str, Any], text: str, *, as_json: bool, output: str | None) -> None:
    """Print the report (text, or JSON with ``as_json``) and write its JSON to ``output``."""
    click.echo(json.dumps(report, indent=2) if as_json else text)
    if output:
        path = Path(output)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report, indent=2) + "\n")
        if not as_json:
            click.echo(f"results written to {path}")
