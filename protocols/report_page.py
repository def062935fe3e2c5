"""``report.md``: a protocol directory's page, from what the directory holds.

The protocol's name and question (its record, :mod:`protocols.registry`),
the command that runs it again, the commit, date and libraries it ran with
(``protocol.json``, :mod:`protocols.provenance`), its tier, preset and
seeds, the table with every run's verdict (``table.md``), the table its own
figures wrote (``figures/<name>.md``, where there is one) and its figures,
linked relative to the directory (``figures/NAME.png``), so that the page
can be read in place or published with them (``scripts/publish_results.py``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from biosim.records import atomic_write_text

from .protocol import Protocol
from .provenance import code_version, protocol_command
from .registry import DEFINITIONS

__all__ = ["report_markdown", "write_report_page"]

_IMAGES = (".png", ".svg")  # what a Markdown page shows inline, in order of preference
_LIBRARIES = ("torch", "brian2", "numpy", "scipy", "matplotlib")


def _code_text(code: dict[str, Any] | None) -> str:
    if not code or not code.get("commit"):
        return "not recorded (no git checkout)" if code else "not recorded"
    dirty = {True: " with uncommitted changes", False: "", None: " (clean or not: unknown)"}[code.get("dirty")]
    return f"`{code['commit']}`{dirty}"


def _figure_links(out_dir: Path, conditions: list[str]) -> list[str]:
    """Markdown links to the figures: the comparison, the protocol's own, then each condition's cards."""
    figure_dir = out_dir / "figures"
    if not figure_dir.is_dir():
        return []
    files = sorted(p for p in figure_dir.iterdir() if p.is_file())
    shown: dict[str, Path] = {}
    for suffix in _IMAGES:
        for path in files:
            if path.suffix == suffix:
                shown.setdefault(path.stem, path)
    kinds = ("diagnostic", "weights")
    cards = {f"{c}_{kind}": (k, j) for k, c in enumerate(conditions) for j, kind in enumerate(kinds)}

    def rank(stem: str) -> tuple:
        if stem == "comparison":
            return (0,)
        return (2, *cards[stem]) if stem in cards else (1, stem)

    lines = [f"![{stem}]({shown[stem].relative_to(out_dir).as_posix()})" for stem in sorted(shown, key=rank)]
    others = [p for p in files if p.suffix == ".pdf"]
    if others:
        lines.append("Also: " + ", ".join(f"[{p.name}]({p.relative_to(out_dir).as_posix()})" for p in others))
    return lines


def report_markdown(out_dir: Path) -> str:
    """The page of the protocol directory ``out_dir`` (which holds ``table.md``; ``protocol.json`` if it ran)."""
    out_dir = Path(out_dir)
    data = json.loads((out_dir / "protocol.json").read_text()) if (out_dir / "protocol.json").is_file() else {}
    spec = data.get("protocol") or {}
    name = spec.get("name", out_dir.name)
    record = DEFINITIONS.get(name)
    lines = [f"# {name}", ""]
    if record is not None:
        lines += [record.question, ""]
    command, note = data.get("command"), ""
    if command is None and spec:
        # An older protocol.json: the command is rebuilt from the protocol it records, without the
        # output directory it does not record (the command's default then).
        command, note = protocol_command(Protocol.from_dict(spec)), " (rebuilt from protocol.json)"
    versions = data.get("versions") or {}
    libraries = ", ".join(f"{lib} {versions[lib]}" for lib in ("python", *_LIBRARIES) if lib in versions)
    drawn = code_version()
    lines += [
        f"- Command: `{command}`{note}" if command else "- Command: not recorded (no protocol.json)",
        f"- Code: {_code_text(data.get('code'))}",
        f"- Date: {data.get('date', 'not recorded')}",
        f"- Libraries: {libraries or 'not recorded'}",
    ]
    if spec:
        seeds = ", ".join(map(str, spec.get("seeds", [])))
        lines.append(
            f"- Tier {spec.get('tier')}, preset {spec.get('preset', 'project')}, seeds {seeds}; "
            f"conditions {', '.join(spec.get('conditions', []))}; Brian2 validation on "
            f"{spec.get('validation_backend', 'cpp_standalone')}"
        )
        extra = {k: v for k, v in (spec.get("overrides") or {}).items() if k not in ("dtype", "device")}
        if extra:
            lines.append(f"- Overrides: `{json.dumps(extra, sort_keys=True)}`")
    lines.append(f"- Table and figures drawn with code {_code_text(drawn)}")
    lines += ["", "## Table", "", (out_dir / "table.md").read_text().strip(), ""]
    own_table = out_dir / "figures" / f"{name}.md"
    if own_table.is_file():  # the table the protocol's own figures wrote (learning_dynamics, reference_ladder)
        lines += [own_table.read_text().strip(), ""]
    figures = _figure_links(out_dir, list(spec.get("conditions", [])))
    if figures:
        lines += ["## Figures", ""]
        for link in figures:
            lines += [link, ""]
    return "\n".join(lines).rstrip() + "\n"


def write_report_page(out_dir: Path) -> Path:
    """Write ``out_dir/report.md`` (:func:`report_markdown`); returns its path."""
    path = Path(out_dir) / "report.md"
    atomic_write_text(path, report_markdown(Path(out_dir)))
    return path
