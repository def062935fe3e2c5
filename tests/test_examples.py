"""Every example runs headless, as a user would run it (small arguments)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"

# Small but real arguments for each example; a new example must be added here.
ARGUMENTS = {
    "ping_raster.py": ["--backend", "numpy", "--n-trials", "2"],
    "tau_gaba_sweep.py": ["--tau-gaba", "6", "10", "--n-trials", "4"],
    # The follow-up protocols: one condition each, on the small network, validated on Brian2's numpy backend.
    **{
        name: ["--small", "--tier", "smoke", "--backend", "numpy", "--conditions", condition]
        for name, condition in (
            ("basin_map.py", "basin_init_w_ei_0p5__init_w_ie_2"),
            ("anti_pruning.py", "anti_pruning_reg_gamma_power_10"),
            ("tau_gaba_trainability.py", "tau_gaba_16_trainable"),
            ("streaming.py", "stream_trainable"),
        )
    },
}


# The protocol steps use each other's outputs: they run in order in one directory.
PROTOCOL_STEPS = {
    "protocol_1_train.py": ["--small", "--tier", "smoke", "--out", "steps"],
    "protocol_2_validate.py": ["steps/trainable_ping_init/seed_42", "--backend", "numpy"],
    "protocol_3_report.py": ["steps"],
}


def test_every_example_is_listed():
    scripts = [p.name for p in EXAMPLES.glob("*.py") if not p.name.startswith("_")]  # _name.py: shared code
    assert sorted(scripts) == sorted({**ARGUMENTS, **PROTOCOL_STEPS})


def _run_example(name: str, arguments, cwd) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(EXAMPLES / name), *arguments],
        cwd=cwd,
        env={**os.environ, "MPLBACKEND": "Agg"},
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_protocol_steps_run_in_order(tmp_path):
    stdout = {}
    for name, arguments in PROTOCOL_STEPS.items():
        completed = _run_example(name, arguments, tmp_path)
        assert completed.returncode == 0, f"{name}: {completed.stderr[-3000:]}"
        stdout[name] = completed.stdout
    assert "verdict: PASS" in stdout["protocol_2_validate.py"]
    assert (tmp_path / "steps" / "table.md").exists()
    assert (tmp_path / "steps" / "figures" / "trainable_ping_init_diagnostic.png").exists()


@pytest.mark.parametrize("name", sorted(ARGUMENTS))
def test_example_runs(name, tmp_path):
    arguments = list(ARGUMENTS[name])
    if "--out" not in arguments and "--out" in (EXAMPLES / name).read_text():
        arguments += ["--out", str(tmp_path)]
    completed = _run_example(name, arguments, tmp_path)
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert completed.stdout.strip(), "an example should print what it found"
