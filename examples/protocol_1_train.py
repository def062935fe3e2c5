"""Protocol step 1: train one (condition, seed) of the Dale-pruning protocol.

python examples/protocol_1_train.py --condition trainable_ping_init --seed 42 --out results/steps
"""

import argparse
from pathlib import Path

from biosim.params import small_network
from biosim.records import write_json
from bridge.training import train
from protocols.definitions import CONDITIONS, Protocol
from protocols.runner import training_status


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--condition", default="trainable_ping_init", choices=list(CONDITIONS))
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--tier", default="cpu")
    parser.add_argument("--out", default="results/steps")
    parser.add_argument("--small", action="store_true", help="a 64 E / 16 I network with 40 ms trials (seconds)")
    args = parser.parse_args()

    overrides = {"network": small_network().to_dict()} if args.small else {}
    protocol = Protocol(
        name="dale_pruning", conditions=(args.condition,), tier=args.tier, seeds=(args.seed,), overrides=overrides
    )
    spec = protocol.runs()[0]
    run_dir = Path(args.out) / spec.run_id
    result = train(spec.config, run_dir)
    write_json(run_dir / "run_spec.json", spec.to_dict())  # what the report step reads
    write_json(run_dir / "status.json", {"run_id": spec.run_id, **training_status(result)})
    final = result.final_metrics
    print(
        f"{spec.run_id}: {result.status}; test accuracy {final['test_accuracy']:.3f}, "
        f"W_EI pruned {final['w_ei_pruned_fraction']:.3f}, W_IE pruned {final['w_ie_pruned_fraction']:.3f}"
    )
    print(f"run directory: {run_dir}")


if __name__ == "__main__":
    main()
