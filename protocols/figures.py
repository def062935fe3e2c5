"""Per-condition figures of a protocol.

- Diagnostic card: per-epoch strip (mean |stored| of W_EI and W_IE, E and I
  rates, test accuracy; one thin line per seed, the seed mean bold), the
  final E-population spectrum with the gamma peak marked, and a single-trial
  raster (E and I). Spectrum and raster come from the Brian2 validation run of
  the first seed: what is drawn is what Brian2 simulated with the trained weights.
- Weight-distribution card: histograms of effective W_EI and W_IE (stored
  values below 0 shown as 0), initial as an outline, trained as a fill, pooled
  over seeds; the legend gives the post-clamp mean and the fraction of edges at 0 (pruned or never grown).

Across conditions:

- Comparison figure (``comparison.<format>``): the conditions side by side,
  one column each in :data:`~protocols.definitions.CONDITIONS` order, the
  condition's verdict (:func:`protocols.verdicts.condition_verdict`) in the
  column title. Rows: (a) test accuracy, (b) E and I rates, (c) W_EI and
  W_IE effective mean, (d) W_EI and W_IE pruned fraction, all per epoch with a
  thin line per seed and the seed mean bold; (e) final effective W_EI and W_IE
  histograms pooled over seeds (initial as an outline); (f) the Brian2 raster
  of the first seed. Rows (a)-(e) share their y axis so the conditions can be
  compared at a glance.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from biosim.analysis.spectra import gamma_peak
from biosim.plotting import E_COLOR, I_COLOR, plot_spectrum

from .definitions import CONDITIONS
from .results import RunRecord, initial_effective, trained_effective
from .verdicts import condition_verdict, run_verdict

__all__ = ["diagnostic_card", "weight_card", "comparison_figure", "draw_all"]

SEED_ALPHA = 0.35
MAX_COMPARISON_COLUMNS = 10
FINISHED = ("completed", "diverged")
"""Run statuses that have something to draw."""


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
    trial = "test trial 0"
    if "digit_steps" in data.files:  # a digit stream (biosim.streams): mark where each digit begins
        digit_steps = int(data["digit_steps"])
        for start in range(digit_steps, int(data["n_steps"]), digit_steps):
            ax.axvline(start * dt, color="k", linestyle="--", linewidth=0.6)
        trial = f"test stream 0 ({int(data['n_steps']) // digit_steps} digits, no reset)"
    ax.set_xlim(0, int(data["n_steps"]) * dt)
    ax.set_ylim(-0.5, n_e + int(data["n_i"]) - 0.5)
    ax.set_xlabel("time (ms)")
    ax.set_ylabel("neuron (E below, I above)")
    ax.set_title(f"Brian2 ({record.validation_backend}) raster, {trial}", fontsize=9)


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
    # Effective values cannot tell a pruned edge (stored < 0) from a stored zero: report both as "at 0".
    return f"{prefix}: mean {values.mean() * 1e3:.3g} nS, at 0: {np.mean(values <= 0) * 100:.1f} %"


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


def _ordered_conditions(records: list[RunRecord]) -> list[str]:
    """The conditions present in ``records``, in :data:`CONDITIONS` order (unknown ones last)."""
    return sorted({r.condition for r in records}, key=lambda c: list(CONDITIONS).index(c) if c in CONDITIONS else 99)


def _finished_runs(records: list[RunRecord], condition: str) -> list[RunRecord]:
    """The completed and diverged runs of ``condition``, by seed."""
    finished = [r for r in records if r.condition == condition and r.status.get("status") in FINISHED]
    return sorted(finished, key=lambda r: r.seed)


def _pooled_effective(runs: list[RunRecord], name: str) -> tuple[np.ndarray, np.ndarray]:
    """Initial and trained effective ``name`` (``w_ei`` or ``w_ie``, uS), pooled over ``runs``."""
    initial = np.concatenate([initial_effective(r)[name].ravel() for r in runs])
    trained = [t[name].ravel() for t in map(trained_effective, runs) if t is not None]
    return initial, np.concatenate(trained) if trained else np.array([])


def _comparison_accuracy(ax, runs: list[RunRecord]) -> None:
    _per_epoch(ax, runs, "test_accuracy", color="k", label="test", scale=100)


def _comparison_rates(ax, runs: list[RunRecord]) -> None:
    _per_epoch(ax, runs, "rate_e_hz", color=E_COLOR, label="E")
    _per_epoch(ax, runs, "rate_i_hz", color=I_COLOR, label="I")


def _comparison_effective_means(ax, runs: list[RunRecord]) -> None:
    _per_epoch(ax, runs, "w_ei_effective_mean", color=E_COLOR, label="W_EI", scale=1e3)  # uS -> nS
    _per_epoch(ax, runs, "w_ie_effective_mean", color=I_COLOR, label="W_IE", scale=1e3)


def _comparison_pruned(ax, runs: list[RunRecord]) -> None:
    _per_epoch(ax, runs, "w_ei_pruned_fraction", color=E_COLOR, label="W_EI", scale=100)
    _per_epoch(ax, runs, "w_ie_pruned_fraction", color=I_COLOR, label="W_IE", scale=100)


def _comparison_histograms(ax, pooled: dict[str, tuple[np.ndarray, np.ndarray]], bins: np.ndarray) -> None:
    """Trained effective weights filled, initial as an outline, both loop matrices on one axis (nS)."""
    for name, color in (("w_ei", E_COLOR), ("w_ie", I_COLOR)):
        initial, trained = pooled[name]
        label = name.upper()
        if trained.size:
            ax.hist(trained * 1e3, bins=bins, color=color, alpha=0.5, label=_legend_label(f"{label} trained", trained))
        ax.hist(initial * 1e3, bins=bins, histtype="step", color=color, linewidth=0.9, label=f"{label} initial")
    ax.set_yscale("log")
    ax.set_xlabel("effective weight per edge (nS)", fontsize=8)
    ax.legend(fontsize=6)


def comparison_figure(records: list[RunRecord], path: Path) -> Path:
    """The conditions side by side with their verdicts (see the module docstring for the rows).

    Parameters
    ----------
    records : list of RunRecord
        Runs of a protocol; only completed and diverged runs are drawn, and
        only conditions with at least one of them get a column.
    path : Path
        Destination; its suffix sets the format.

    Returns
    -------
    Path
        ``path``.
    """
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    conditions = [c for c in _ordered_conditions(records) if _finished_runs(records, c)]
    if not conditions:
        raise ValueError("no completed or diverged run to compare")
    runs = {c: _finished_runs(records, c) for c in conditions}
    pooled = {c: {name: _pooled_effective(runs[c], name) for name in ("w_ei", "w_ie")} for c in conditions}
    # One set of bins for the whole row, so the histograms line up across conditions.
    upper = max(float(values.max(initial=0.0)) for p in pooled.values() for pair in p.values() for values in pair)
    bins = np.linspace(0.0, upper * 1e3 if upper > 0 else 1.0, 60)

    per_epoch_rows = (
        (_comparison_accuracy, "(a) test accuracy (%)"),
        (_comparison_rates, "(b) rate, test digits (Hz)"),
        (_comparison_effective_means, "(c) effective mean (nS)"),
        (_comparison_pruned, "(d) pruned (%)"),
    )
    n_rows = len(per_epoch_rows) + 2
    fig, axes = plt.subplots(
        n_rows,
        len(conditions),
        figsize=(3.8 * len(conditions), 2.4 * n_rows),
        sharey="row",
        squeeze=False,
        layout="constrained",  # room for the three-line column titles without a gap under the suptitle
        gridspec_kw={"height_ratios": [1] * len(per_epoch_rows) + [1.2, 1.6]},
    )
    for column, condition in enumerate(conditions):
        column_axes = axes[:, column]
        for ax, (draw, _) in zip(column_axes[: len(per_epoch_rows)], per_epoch_rows, strict=True):
            draw(ax, runs[condition])
            ax.set_xlabel("epoch", fontsize=8)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        _comparison_histograms(column_axes[-2], pooled[condition], bins)
        completed = [r for r in runs[condition] if r.ok]
        first = (completed or runs[condition])[0]  # a diverged run has no Brian2 raster
        _raster(column_axes[-1], first)
        column_axes[-1].set_title(f"(f) Brian2 raster, seed {first.seed}, test trial 0", fontsize=8)
        verdict = condition_verdict([run_verdict(r.status) for r in completed])
        seeds = ", ".join(str(r.seed) for r in runs[condition])
        column_axes[0].set_title(f"{condition}\n{verdict}\nseeds {seeds}", fontsize=9)
        if column > 0:
            column_axes[-1].set_ylabel("")
    for ax, (_, label) in zip(axes[: len(per_epoch_rows), 0], per_epoch_rows, strict=True):
        ax.set_ylabel(label, fontsize=8)
    axes[-2, 0].set_ylabel("(e) final edges\n(pooled over seeds)", fontsize=8)
    for row in range(1, len(per_epoch_rows)):
        axes[row, 0].legend(fontsize=7)
    fig.suptitle("conditions compared (verdict: Brian2 on the test digits, see table.md)", fontsize=11)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def draw_all(records: list[RunRecord], figure_dir: Path, formats: tuple[str, ...] = ("png",)) -> list[Path]:
    """Both cards for every condition with at least one finished run, and the comparison figure.

    The comparison figure has one column per condition; protocols with more than
    :data:`MAX_COMPARISON_COLUMNS` conditions (grids) need figures of their own.
    """
    paths = []
    for condition in _ordered_conditions(records):
        finished = _finished_runs(records, condition)
        if not finished:
            continue
        for fmt in formats:
            paths.append(diagnostic_card(condition, finished, figure_dir / f"{condition}_diagnostic.{fmt}"))
            paths.append(weight_card(condition, finished, figure_dir / f"{condition}_weights.{fmt}"))
    drawn = [c for c in _ordered_conditions(records) if _finished_runs(records, c)]
    if drawn and len(drawn) <= MAX_COMPARISON_COLUMNS:
        for fmt in formats:
            paths.append(comparison_figure(records, figure_dir / f"comparison.{fmt}"))
    return paths
