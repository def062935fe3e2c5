"""What the follow-up examples share: run a protocol (a subset of its conditions) and print its table.

Not an example itself (the leading underscore); ``basin_map.py``, ``anti_pruning.py``,
``tau_gaba_trainability.py`` and ``streaming.py`` import it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from biosim.params import small_network
from protocols.definitions import get_protocol
from protocols.report import write_report
from protocols.runner import run_protocol, summarize_statuses


def parser(description: str, default_conditions: list[str]) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--conditions", nargs="+", default=default_conditions, help="default: %(default)s")
    p.add_argument("--tier", help="default: the protocol's (biosim protocol list)")
    p.add_argument("--seeds", type=int, nargs="+")
    p.add_argument("--processes", type=int, default=1)
    p.add_argument("--backend", default="cpp_standalone", help="Brian2 backend of the validation")
    p.add_argument("--small", action="store_true", help="a 64 E / 16 I network with 40 ms trials (seconds)")
    p.add_argument("--out", required=True)
    return p


def run(name: str, args: argparse.Namespace) -> Path:
    """Run protocol ``name`` with the parsed arguments; print the table; return the output directory."""
    overrides = {"network": small_network().to_dict()} if args.small else {}
    protocol = get_protocol(
        name,
        tier=args.tier,
        seeds=tuple(args.seeds) if args.seeds else None,
        conditions=tuple(args.conditions),
        validation_backend=args.backend,
        **overrides,
    )
    out = Path(args.out)
    statuses = run_protocol(protocol, out, processes=args.processes, progress=False)
    table, figures = write_report(out)
    print(table.read_text())
    print(f"runs: {summarize_statuses(statuses)}\nfigures: {figures}")
    return out
