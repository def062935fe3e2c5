"""Calibrate a preset's input scale in Brian2: the untrained network at several scales of W_in.

The calibration target (docs/model.md) is "PING on" with the loop at its
canonical draw: E 6 to 11 Hz, I 30 to 46 Hz, an E gamma peak at 30 to 46 Hz
that stands at least 3 x above the band median. Each scale is run on the same
test digits, input spikes and weights (``--seed``), so only the scale differs.
The record (``run.json``: every scale's rates and peak, the network, the
versions) is what docs/reference.md cites for the reference preset's
``input_scale_us``.

Usage: python scripts/calibrate_input_scale.py [--preset reference] [--scales 0.15 0.17 0.19]
       [--n-trials 100] [--seed 0] [--backend cpp_standalone] [--out docs/data/reference_calibration]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from biosim.backends import BACKENDS, check_backend
from biosim.records import check_writable_dir, write_run_record
from biosim.simulation import simulate_test_digits
from bridge.presets import PRESETS

BAND = {"rate_e_hz": (6.0, 11.0), "rate_i_hz": (30.0, 46.0), "gamma_peak_hz": (30.0, 46.0)}
MIN_RELATIVE_POWER = 3.0


def in_band(summary: dict) -> bool:
    """Whether one scale's summary meets the calibration target."""
    inside = all(low <= summary[key] <= high for key, (low, high) in BAND.items())
    return inside and summary["gamma_relative_power"] >= MIN_RELATIVE_POWER


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="reference", choices=tuple(PRESETS))
    parser.add_argument("--scales", type=float, nargs="+", default=[0.15, 0.17, 0.19], help="input_scale_us values")
    parser.add_argument("--n-trials", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--backend", default="cpp_standalone", choices=BACKENDS)
    parser.add_argument("--out", type=Path, default=Path("docs/data/reference_calibration"))
    args = parser.parse_args()
    if not all(scale > 0 for scale in args.scales):
        parser.error(f"--scales: every input scale must be > 0 uS, got {args.scales}")
    check_backend(args.backend)
    check_writable_dir(args.out, "--out")  # before the simulations, so that their results cannot be lost
    network = PRESETS[args.preset].network
    rows = []
    for scale in args.scales:
        params = network.replace(init__input_scale_us=scale)
        _, summary, _ = simulate_test_digits(
            backend=args.backend,
            n_trials=args.n_trials,
            seed=args.seed,
            params=params,
            build_dir=Path("results/calibration_build") / args.backend,
            progress=False,
        )
        row = {"input_scale_us": scale, **summary.as_dict()}
        row["in_band"] = in_band(row)
        rows.append(row)
        print(
            f"input_scale_us {scale:g}: E {row['rate_e_hz']:.2f} Hz  I {row['rate_i_hz']:.2f} Hz  "
            f"gamma peak {row['gamma_peak_hz']:.1f} Hz (x{row['gamma_relative_power']:.1f})  "
            f"{'in band' if row['in_band'] else 'outside the band'}",
            flush=True,
        )
    config = {**vars(args), "out": str(args.out), "network": network.to_dict(), "band": BAND}
    record = write_run_record(
        args.out, command="calibrate_input_scale", config=config, seed=args.seed, metrics={"scales": rows}
    )
    print(f"record: {record}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
