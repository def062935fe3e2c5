"""Protocol step 3: draw the cards and write the at-a-glance table of a protocol directory.

python examples/protocol_3_report.py results/steps
"""

import argparse
from pathlib import Path

from protocols.report import write_report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out")
    parser.add_argument("--formats", nargs="+", default=["png"])
    args = parser.parse_args()
    table, figures = write_report(Path(args.out), formats=tuple(args.formats))
    print(table.read_text())
    print(f"figures: {sorted(p.name for p in figures.iterdir())}")


if __name__ == "__main__":
    main()
