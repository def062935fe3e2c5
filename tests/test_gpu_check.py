"""scripts/gpu_check.sh: its no-GPU path (what runs on a machine without one), and the merged report.

The script's GPU path needs an NVIDIA GPU and is not run here. The no-GPU
tests hide any real ``nvidia-smi`` from the script (a PATH without it, or a
stand-in that finds no device), so they take the same path on every machine.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.gpu_check import TARGETS, merge

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "gpu_check.sh"


def _run(out: Path, path: str, *extra: str) -> subprocess.CompletedProcess:
    environment = dict(os.environ, PATH=path)
    return subprocess.run(
        ["bash", str(SCRIPT), "--out", str(out), *extra],
        capture_output=True,
        text=True,
        env=environment,
        cwd=ROOT,
        timeout=60,
    )


def _path_without_nvidia_smi() -> str:
    return os.pathsep.join(
        d for d in os.environ.get("PATH", "").split(os.pathsep) if d and not (Path(d) / "nvidia-smi").exists()
    )


def _assert_no_gpu_report(result: subprocess.CompletedProcess, out: Path, reason_part: str) -> None:
    assert result.returncode == 2, result.stderr
    assert "gpu_check: no NVIDIA GPU here" in result.stderr
    assert "nothing was installed or measured" in result.stderr
    assert str(out) in result.stderr
    report = json.loads(out.read_text())
    assert report["gpu"] is False
    assert reason_part in report["reason"]
    assert report["reason"] in result.stderr
    assert report["exit_status"] == 2
    assert not (out.parent / "gpu_check_work").exists()  # stopped before any install or work


def test_without_nvidia_smi_it_stops_with_exit_status_2(tmp_path: Path) -> None:
    out = tmp_path / "results" / "gpu_check.json"
    result = _run(out, _path_without_nvidia_smi())
    _assert_no_gpu_report(result, out, "nvidia-smi not found")


def test_nvidia_smi_without_a_device_stops_too(tmp_path: Path) -> None:
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "nvidia-smi").write_text('#!/bin/sh\necho "No devices were found"\nexit 6\n')
    (fake / "nvidia-smi").chmod(0o755)
    out = tmp_path / "gpu_check.json"
    result = _run(out, f"{fake}{os.pathsep}{os.environ['PATH']}")
    _assert_no_gpu_report(result, out, "lists no GPU (exit status 6: No devices were found)")


def test_bad_arguments_are_refused(tmp_path: Path) -> None:
    for arguments, message in (
        (["--budget-s", "soon"], "expected a positive integer"),
        (["--steps", "train,fly"], "unknown step 'fly'"),
        (["--frobnicate"], "unknown argument --frobnicate"),
    ):
        result = _run(tmp_path / "x.json", os.environ["PATH"], *arguments)
        assert result.returncode == 3
        assert message in result.stderr
    assert not (tmp_path / "x.json").exists()


def test_help_names_the_steps_and_exit_statuses() -> None:
    result = subprocess.run(["bash", str(SCRIPT), "--help"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0
    assert "cuda_standalone" in result.stdout and "2 no GPU" in result.stdout


def _step(parts: Path, name: str, status: str, result: dict | None = None, **extra) -> None:
    log = parts.parent / f"{name}.log"
    log.write_text(f"line one of {name}\nlast line of {name}\n")
    (parts / f"{name}.step.json").write_text(json.dumps({"status": status, "log": str(log), **extra}))
    if result is not None:
        (parts / f"{name}.json").write_text(json.dumps(result))


def test_merge_joins_the_steps_into_one_report_with_the_targets(tmp_path: Path) -> None:
    parts = tmp_path / "parts"
    parts.mkdir()
    (parts / "install.json").write_text(json.dumps({"could_not_install": ["brian2cuda (offline)"]}))
    metrics = tmp_path / "metrics.jsonl"  # a training step stopped after its first epoch
    metrics.write_text(
        "\n".join(json.dumps(e) for e in ({"epoch": 0, "wall_time_s": 3.0}, {"epoch": 1, "wall_time_s": 1.5}))
    )
    _step(parts, "train_epoch", "timeout", metrics_jsonl=str(metrics))
    _step(parts, "bench", "ok", {"speedup": 30.0, "grad_max_rel_diff": 1e-15})
    _step(parts, "brian2_cpp_standalone", "ok", {"build_s": 10.0, "simulate_s": 12.0, "total_s": 22.0})
    _step(parts, "brian2_cuda_standalone", "ok", {"build_s": 60.0, "simulate_s": 0.4, "total_s": 60.4})
    _step(parts, "crosscheck", "ok", {"backends": {"cuda_standalone": {"identical": True, "identity_fraction": 1.0}}})
    out = tmp_path / "gpu_check.json"

    report = merge(parts, out, meta={"budget_s": 480})

    assert json.loads(out.read_text()) == report
    assert report["gpu"] is True and report["budget_s"] == 480
    assert report["install"]["could_not_install"] == ["brian2cuda (offline)"]
    assert report["steps"]["bench"]["log_tail"] == ["line one of bench", "last line of bench"]
    summary = report["summary"]
    assert summary["medium_epoch_s"] == 1.5 and summary["medium_epoch_meets_target"] is True
    assert "partial" in report["steps"]["train_epoch"]["result"]
    assert summary["cuda_standalone_speedup"] == pytest.approx(30.0)
    assert summary["cuda_standalone_meets_target"] is (30.0 >= TARGETS["cuda_standalone_speedup"])
    assert summary["cuda_standalone_speedup_with_build"] == pytest.approx(22.0 / 60.4)
    assert summary["cuda_standalone_spikes_identical_to_mirror_float64"] is True
    assert summary["bench_speedup"] == 30.0
    assert summary["steps_not_ok"] == ["train_epoch"]


def test_under_the_device_tool_the_report_goes_to_out_even_without_home(tmp_path: Path) -> None:
    """With $OUT set and $HOME unset (a bare device machine), the merged report, step files and logs land in $OUT.

    A stand-in ``nvidia-smi`` lists a GPU; this machine's torch sees none, so the one step asked for is
    skipped at once: what is tested is where things go, not the measurements.
    """
    fake = tmp_path / "bin"
    fake.mkdir()
    stand_in = '#!/bin/sh\n[ "$1" = -L ] && echo "GPU 0: stand-in" || echo "stand-in, 0, 1 MiB"\n'
    (fake / "nvidia-smi").write_text(stand_in)
    (fake / "nvidia-smi").chmod(0o755)
    out = tmp_path / "out"
    out.mkdir()
    environment = {k: v for k, v in os.environ.items() if k != "HOME"}
    environment.update(
        PATH=f"{fake}{os.pathsep}{os.environ['PATH']}",
        OUT=str(out),
        BIOSIM_GPU_WORK=str(tmp_path / "work"),
    )
    result = subprocess.run(
        ["bash", str(SCRIPT), "--no-install", "--python", sys.executable, "--steps", "train", "--budget-s", "60"],
        capture_output=True,
        text=True,
        env=environment,
        cwd=ROOT,
        timeout=300,
    )
    assert result.returncode == 1, result.stderr  # the skipped steps are not ok
    report = json.loads((out / "gpu_check.json").read_text())
    assert report["gpu"] is True and report["state"] == "complete"
    assert set(report["tools"]) == {"make", "g++", "nvcc"}
    parts = out / "gpu_check_parts"
    assert (parts / "train_epoch.step.json").is_file() and (parts / "install.log").is_file()
