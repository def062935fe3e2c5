"""Protocol step 2: run a trained network in Brian2 and compare it with the mirror.

python examples/protocol_2_validate.py results/steps/trainable_ping_init/seed_42 --backend cpp_standalone
"""

import argparse
import json
from pathlib import Path

from biosim.records import write_json
from bridge.validation import format_report, validate
from protocols.runner import validation_status


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir")
    parser.add_argument("--backend", default="cpp_standalone")
    args = parser.parse_args()
    report = validate(args.run_dir, backend=args.backend)
    print(format_report(report))
    status_path = Path(args.run_dir) / "status.json"
    if status_path.exists():  # a protocol run: store the verdict with it, as the runner does
        status = json.loads(status_path.read_text())
        write_json(status_path, {**status, "validation": validation_status(report)})


if __name__ == "__main__":
    main()
