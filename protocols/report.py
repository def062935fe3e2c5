"""Figures, table and report page of a protocol directory (re-runnable at any time)."""

from __future__ import annotations

import json
from pathlib import Path

from .figures import draw_all
from .report_page import write_report_page
from .results import load_runs
from .sweep_figures import draw_sweep_figures
from .table import write_tables

__all__ = ["write_report"]


def write_report(out_dir: Path, *, formats: tuple[str, ...] = ("png",)) -> tuple[Path, Path]:
    """Draw every card into ``out_dir/figures``, write ``table.md`` / ``table.csv`` and ``report.md``.

    A protocol whose record names figures of its own (the sweeps) also gets
    those (:func:`protocols.sweep_figures.draw_sweep_figures`); ``report.md``
    is the page of all of it (:mod:`protocols.report_page`).

    Returns the Markdown table's path and the figure directory.
    """
    records = load_runs(out_dir)
    if not records:
        raise FileNotFoundError(f"no runs under {out_dir} (expected CONDITION/seed_N/run_spec.json)")
    protocol_path = out_dir / "protocol.json"
    title = "protocol"
    name, conditions = None, None
    if protocol_path.exists():
        protocol = json.loads(protocol_path.read_text())["protocol"]
        name, conditions = protocol["name"], protocol["conditions"]
        title = f"{protocol['name']}, tier {protocol['tier']}, seeds {', '.join(map(str, protocol['seeds']))}"
        if protocol.get("preset", "project") != "project":
            title += f", {protocol['preset']} recipe"
    figure_dir = out_dir / "figures"
    draw_all(records, figure_dir, formats)
    draw_sweep_figures(records, figure_dir, formats, protocol_name=name, conditions=conditions, title=title)
    table, _ = write_tables(records, out_dir, title=title)
    write_report_page(out_dir)
    return table, figure_dir
