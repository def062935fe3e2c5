"""Per-condition figures of a protocol (SPEC section 4).

- Diagnostic card: per-epoch strip (mean |stored| of W_EI and W_IE, E and I
  rates, test accuracy; one thin line per seed, the seed mean bold), the
  final E-population spectrum with the gamma peak marked, and a single-trial
  raster (E and I). Spectrum and raster come from the Brian2 validation run of
  the first seed: what is drawn is what Brian2 simulated with the trained weights.
- Weight-distribution card: histograms of effective W_EI and W_IE (stored
  values below 0 shown as 0), initial as an outline, trained as a fill, pooled
  over seeds; the legend gives the post-clamp mean and the pruned fraction.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from biosim.analysis.spectra import gamma_peak
from biosim.plotting import E_COLOR, I_COLOR, plot_spectrum

from .definitions import CONDITIONS
from .results import RunRecord, initial_effective, trained_effective

__all__ = ["diagnostic_card", "weight_card", "draw_all"]

SEED_ALPHA = 0.35


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _per_epoch(ax, records: list[RunRecord], key: str, *, color: str, label: str, scale: float = 1.0) -> None:
    curves = []
    for record in records:
        metrics = record.metrics()
        epochs = [m["epoch"] for m in metrics]
        values = [np.nan if m.get(key) is None else m[key] * scale for m in metrics]
        ax.plot(epochs, values, color=color, alpha=SEED_ALPHA, linewidth=0.8)
        curves.append(values)
    length = min((len(c) for c in curves), default=0)
    if length:
        mean = np.nanmean(np.array([c[:length] for c in curves]), axis=0)
        ax.plot(range(length), mean, color=color, linewidth=2.0, label=label)


def _raster(ax, record: RunRecord) -> None:
    path = record.run_dir / f"raster_{record.validation_backend}.npz"
    if not path.exists():
        ax.text(0.5, 0.5, "no Brian2 raster", ha="center", va="center", transform=ax.transAxes)
        return
    data = np.load(path)
    dt, n_e = float(data["dt_ms"]), int(data["n_e"])
    ax.scatter(data["e_step"] * dt, data["e_neuron"], s=0.5, marker="|", color=E_COLOR, linewidths=0.4)
    ax.scatter(data["i_step"] * dt, data["i_neuron"] + n_e, s=0.5, marker="|", color=I_COLOR, linewidths=0.4)
    ax.axhline(n_e - 0.5, color="0.6", linewidth=0.5)
    ax.set_xlim(0, int(data["n_steps"]) * dt)
    ax.set_ylim(-0.5, n_e + int(data["n_i"]) - 0.5)
    ax.set_xlabel("time (ms)")
    ax.set_ylabel("neuron (E below, I above)")
    ax.set_title(f"Brian2 ({record.validation_backend}) raster, test trial 0", fontsize=9)


def _spectrum(ax, record: RunRecord) -> None:
    path = record.run_dir / f"spectrum_{record.validation_backend}.json"
    if not path.exists():
        ax.text(0.5, 0.5, "no Brian2 spectrum", ha="center", va="center", transform=ax.transAxes)
        return
    data = json.loads(path.read_text())
    frequencies, power = np.asarray(data["frequency_hz"]), np.asarray(data["power"])
    plot_spectrum(ax, frequencies, power, gamma_peak(frequencies, power))
    ax.set_title(f"final E spectrum (Brian2 {record.validation_backend}, test digits)", fontsize=9)


def diagnostic_card(condition: str, records: list[RunRecord], path: Path) -> Path:
    plt = _pyplot()
    fig = plt.figure(figsize=(13, 7.5))
    grid = fig.add_gridspec(2, 4, height_ratios=[1, 1.35], hspace=0.42, wspace=0.45)
    strip = [fig.add_subplot(grid[0, k]) for k in range(4)]
    _per_epoch(strip[0], records, "w_ei_mean_abs_stored", color=E_COLOR, label="W_EI", scale=1e3)
    strip[0].set_title("W_EI mean |stored|", fontsize=9)
    strip[0].set_ylabel("nS")
    _per_epoch(strip[1], records, "w_ie_mean_abs_stored", color=I_COLOR, label="W_IE", scale=1e3)
    strip[1].set_title("W_IE mean |stored|", fontsize=9)
    strip[1].set_ylabel("nS")
    _per_epoch(strip[2], records, "rate_e_hz", color=E_COLOR, label="E")
    _per_epoch(strip[2], records, "rate_i_hz", color=I_COLOR, label="I")
    strip[2].set_title("rates (test digits, mirror)", fontsize=9)
    strip[2].set_ylabel("Hz")
    strip[2].legend(fontsize=7)
    _per_epoch(strip[3], records, "test_accuracy", color="k", label="test", scale=100)
    strip[3].set_title("test accuracy", fontsize=9)
    strip[3].set_ylabel("%")
    for ax in strip:
        ax.set_xlabel("epoch")
    first = sorted(records, key=lambda r: r.seed)[0]
    _spectrum(fig.add_subplot(grid[1, :2]), first)
    _raster(fig.add_subplot(grid[1, 2:]), first)
    seeds = ", ".join(str(r.seed) for r in sorted(records, key=lambda r: r.seed))
    description = CONDITIONS[condition].description if condition in CONDITIONS else ""
    fig.suptitle(f"{condition} ({description}); seeds {seeds}; bottom panels: seed {first.seed}", fontsize=11)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=130, bbox_inches="tight")
    plt.close(fig)
    return path


def _legend_label(prefix: str, values: np.ndarray) -> str:
    return f"{prefix}: mean {values.mean() * 1e3:.3g} nS, pruned {np.mean(values <= 0) * 100:.1f} %"


def weight_card(condition: str, records: list[RunRecord], path: Path) -> Path:
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    for ax, name, color in ((axes[0], "w_ei", E_COLOR), (axes[1], "w_ie", I_COLOR)):
        initial = np.concatenate([initial_effective(r)[name].ravel() for r in records])
        trained_parts = [trained_effective(r) for r in records]
        trained = (
            np.concatenate([t[name].ravel() for t in trained_parts if t is not None])
            if any(t is not None for t in trained_parts)
            else np.array([])
        )
        upper = max(initial.max(initial=0.0), trained.max(initial=0.0)) * 1e3
        bins = np.linspace(0.0, upper if upper > 0 else 1.0, 60)
        if trained.size:
            ax.hist(trained * 1e3, bins=bins, color=color, alpha=0.55, label=_legend_label("trained", trained))
        ax.hist(
            initial * 1e3, bins=bins, histtype="step", color="k", linewidth=1.2, label=_legend_label("initial", initial)
        )
        ax.set_yscale("log")
        ax.set_xlabel(f"effective {name.upper().replace('W_', 'W_')} per edge (nS)")
        ax.set_ylabel("edges (pooled over seeds)")
        ax.legend(fontsize=8)
        ax.set_title(f"{'E -> I' if name == 'w_ei' else 'I -> E'} ({name}); stored < 0 shown as 0", fontsize=9)
    fig.suptitle(f"{condition}: weight distributions, seeds {', '.join(str(r.seed) for r in records)}", fontsize=11)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path


def draw_all(records: list[RunRecord], figure_dir: Path, formats: tuple[str, ...] = ("png",)) -> list[Path]:
    """Both cards for every condition with at least one finished run."""
    paths = []
    conditions = sorted(
        {r.condition for r in records}, key=lambda c: list(CONDITIONS).index(c) if c in CONDITIONS else 99
    )
    for condition in conditions:
        finished = [
            r for r in records if r.condition == condition and r.status.get("status") in ("completed", "diverged")
        ]
        if not finished:
            continue
        for fmt in formats:
            paths.append(diagnostic_card(condition, finished, figure_dir / f"{condition}_diagnostic.{fmt}"))
            paths.append(weight_card(condition, finished, figure_dir / f"{condition}_weights.{fmt}"))
    return paths
