"""Run test digits through the untrained PING network and draw raster + spectrum.

python examples/ping_raster.py --backend cpp_standalone --n-trials 20 --out results/examples
"""

import argparse
from pathlib import Path

from biosim.analysis import gamma_peak, population_spectrum
from biosim.params import NetworkParams
from biosim.plotting import raster_and_spectrum_figure
from biosim.simulation import simulate_test_digits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", default="numpy")
    parser.add_argument("--n-trials", type=int, default=5)
    parser.add_argument("--out", default="results/examples")
    args = parser.parse_args()

    params = NetworkParams()
    result, summary, _ = simulate_test_digits(backend=args.backend, n_trials=args.n_trials, params=params)
    print(f"E {summary.rate_e_hz:.1f} Hz, I {summary.rate_i_hz:.1f} Hz, gamma peak {summary.gamma_peak_hz:.0f} Hz")

    sim = params.simulation
    frequencies, power = population_spectrum(result.spikes_e, sim.dt_ms, sim.transient_ms)
    path = raster_and_spectrum_figure(
        result,
        frequencies,
        power,
        gamma_peak(frequencies, power),
        Path(args.out) / "ping_raster.png",
        transient_ms=sim.transient_ms,
    )
    print(f"figure: {path}")


if __name__ == "__main__":
    main()
