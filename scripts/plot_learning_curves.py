"""Draw docs/figures/learning_curves.png from the measured runs in docs/data/learning_curves/.

Each ``NAME.metrics.jsonl`` is a run's ``metrics.jsonl`` (one line per epoch,
10 Adam steps per epoch); ``NAME.steps.jsonl`` holds the gradient norms of
W_in and W_out before clipping at every step (two of the runs). The settings
of each run are in docs/training.md, "Why learning was slow".

Usage: python scripts/plot_learning_curves.py [DATA_DIR] [OUT_PNG]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
STEPS_PER_EPOCH = 10  # 320 digits, batches of 32
RUNS = (
    ("global_clip", "global clip, readout unit 1 (before)", "0.55", "-"),
    ("per_matrix_clip", "per-matrix clip, readout unit 1", "tab:blue", "-"),
    ("per_matrix_clip_readout_unit_10", "per-matrix clip, readout unit 10 (chosen)", "tab:red", "-"),
    ("loop_trainable_per_matrix_clip", "loop trainable, per-matrix clip, unit 1", "tab:blue", "--"),
)


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def main(data_dir: Path, out: Path) -> None:
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for name, label, color, style in RUNS:
        metrics = _lines(data_dir / f"{name}.metrics.jsonl")
        steps = [m["epoch"] * STEPS_PER_EPOCH for m in metrics]
        axes[0].plot(steps, [100 * m["test_accuracy"] for m in metrics], style, color=color, marker="o", label=label)
        axes[1].plot(steps, [m["loss"] for m in metrics], style, color=color, marker="o", label=label)
    axes[0].set_ylabel("test accuracy (%), 200 held-out digits")
    axes[1].set_ylabel("training cross-entropy (epoch mean)")
    for name, color in (("global_clip", "0.55"), ("per_matrix_clip", "tab:blue")):
        records = _lines(data_dir / f"{name}.steps.jsonl")
        steps = range(1, len(records) + 1)
        axes[2].semilogy(steps, [r["w_in"] for r in records], color=color, label=f"W_in, {name.replace('_', ' ')}")
        axes[2].semilogy(
            steps, [r["w_out"] for r in records], ":", color=color, label=f"W_out, {name.replace('_', ' ')}"
        )
    axes[2].set_ylabel("gradient norm before clipping")
    for ax in axes:
        ax.set_xlabel("Adam step (batch 32)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    axes[2].legend(fontsize=7)
    fig.suptitle(
        "Frozen-loop control (solid) and trainable loop (dashed); seed 42, 320 training digits, "
        "full 1024/256 network, fused engine, float32"
    )
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    print(out)


if __name__ == "__main__":
    data = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "docs" / "data" / "learning_curves"
    target = Path(sys.argv[2]) if len(sys.argv) > 2 else ROOT / "docs" / "figures" / "learning_curves.png"
    main(data, target)
