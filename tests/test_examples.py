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
}


def test_every_example_is_listed():
    assert sorted(p.name for p in EXAMPLES.glob("*.py")) == sorted(ARGUMENTS)


@pytest.mark.parametrize("name", sorted(ARGUMENTS))
def test_example_runs(name, tmp_path):
    arguments = list(ARGUMENTS[name])
    if "--out" not in arguments and "--out" in (EXAMPLES / name).read_text():
        arguments += ["--out", str(tmp_path)]
    env = {**os.environ, "MPLBACKEND": "Agg"}
    completed = subprocess.run(
        [sys.executable, str(EXAMPLES / name), *arguments],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert completed.stdout.strip(), "an example should print what it found"
