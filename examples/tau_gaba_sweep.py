"""How the GABA decay time sets the gamma frequency (PyTorch mirror, no compilation).

In PING, E cells fire again once the inhibitory conductance has decayed, so a
slower GABA synapse should lengthen the cycle and lower the gamma peak.

    python examples/tau_gaba_sweep.py --tau-gaba 6 8 10 --n-trials 16
"""

import argparse

import torch

from biosim.params import NetworkParams
from biosim.simulation import load_test_trials, summarize
from biosim.weights import init_weights
from bridge.simulate import run_mirror


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tau-gaba", type=float, nargs="+", default=[6.0, 8.0, 10.0], help="ms")
    parser.add_argument("--n-trials", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    print(f"{'tau_gaba (ms)':>14} {'E (Hz)':>8} {'I (Hz)':>8} {'gamma (Hz)':>11}")
    for tau_gaba in args.tau_gaba:
        params = NetworkParams().replace(synapse__tau_gaba_ms=tau_gaba)
        trials = load_test_trials(params, args.n_trials, seed=args.seed)
        result = run_mirror(params, init_weights(params, seed=args.seed), trials, dtype=torch.float32)
        s = summarize(result, params)
        print(f"{tau_gaba:>14.1f} {s.rate_e_hz:>8.2f} {s.rate_i_hz:>8.2f} {s.gamma_peak_hz:>11.1f}")


if __name__ == "__main__":
    main()
