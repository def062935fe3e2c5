"""Publish a protocol's report into the docs, as the protocol wrote it.

    python scripts/publish_results.py results/dale_pruning_study_reference            # the main job
    python scripts/publish_results.py results/basin_map_survey --name basin_map --no-readme

copies ``DIR/report.md`` to ``docs/results/NAME.md`` (figure links pointing
to copies under ``docs/results/NAME/``) and, for the main job, puts the
protocol's table (``DIR/table.md`` up to its per-run verdicts) between the
README's ``main-job table`` markers. Nothing is typed by hand: the numbers
are the ones the protocol printed. ``biosim protocol report DIR`` rewrites
the report of an existing protocol directory first, if it has none.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
MAIN_JOB_PROTOCOL = "dale_pruning"
"""The protocol scripts/main.sh runs: the one whose table the README shows."""
BEGIN = "<!-- main-job table: begin -->"
END = "<!-- main-job table: end -->"
_LINK = re.compile(r"(!?\[[^\]]*\]\()([^)\s]+)(\))")


def table_summary(table_md: str) -> str:
    """The heading and the table of ``table.md``, without the legend (the report, linked below it, has that)."""
    heading, table = table_md.strip().split("\n\n")[:2]
    return f"{heading}\n\n{table}"


def replace_block(text: str, block: str) -> str:
    if BEGIN not in text or END not in text:
        raise SystemExit(f"{README}: the markers {BEGIN} and {END} are missing")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{BEGIN}\n{block}\n{END}{tail}"


def publish_report(protocol_dir: Path, name: str, docs: Path) -> Path:
    report = (protocol_dir / "report.md").read_text()
    assets = docs / name
    if assets.exists():
        shutil.rmtree(assets)

    def relink(match: re.Match) -> str:
        target = match.group(2)
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            return match.group(0)
        source = (protocol_dir / target).resolve()
        if not source.is_file():
            raise SystemExit(f"{protocol_dir / 'report.md'} links to {target}, which does not exist")
        copy = assets / Path(target)
        copy.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, copy)
        return f"{match.group(1)}{name}/{target}{match.group(3)}"

    page = docs / f"{name}.md"
    page.write_text(_LINK.sub(relink, report))
    return page


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("protocol_dir", type=Path, help="a protocol's output directory (holds protocol.json)")
    parser.add_argument("--name", help="page name under docs/results/ (default: the protocol's name)")
    parser.add_argument(
        "--no-readme", action="store_true", help="keep the README main-job table (only dale_pruning writes it)"
    )
    args = parser.parse_args(argv)
    for required in ("protocol.json", "table.md", "report.md"):
        if not (args.protocol_dir / required).is_file():
            hint = " (biosim protocol report DIR writes it)" if required == "report.md" else ""
            parser.error(f"protocol_dir: {args.protocol_dir / required} does not exist{hint}")
    protocol = json.loads((args.protocol_dir / "protocol.json").read_text())["protocol"]
    name = args.name or protocol["name"]
    page = publish_report(args.protocol_dir, name, ROOT / "docs" / "results")
    print(f"wrote {page.relative_to(ROOT)}", file=sys.stderr)
    # Only the main job's protocol owns the README's table; another protocol's page must not replace it.
    if not args.no_readme and protocol["name"] == MAIN_JOB_PROTOCOL:
        table = table_summary((args.protocol_dir / "table.md").read_text())
        README.write_text(replace_block(README.read_text(), table))
        print(f"wrote the main-job table into {README.relative_to(ROOT)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
