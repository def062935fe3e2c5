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
import tarfile
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
        (["--total-s", "0"], "expected a positive integer"),
        (["--max-copies", "-4"], "expected a positive integer"),
        (["--protocol-epochs", "many"], "expected a positive integer"),
        (["--steps", "protocol,fly"], "unknown step 'fly'"),
        (["--rehearse", "--steps", "cpp"], "unknown step 'cpp'"),
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


def _protocol_run(protocol_dir: Path, run_id: str, walls: list[float], status: dict | None = None) -> None:
    run_dir = protocol_dir / run_id
    run_dir.mkdir(parents=True)
    epochs = [
        {"epoch": k, "wall_time_s": wall, "test_accuracy": 0.1 * k, "grad_norm": 1.0} for k, wall in enumerate(walls)
    ]
    (run_dir / "metrics.jsonl").write_text("\n".join(json.dumps(e) for e in epochs) + "\n")
    if status is not None:
        (run_dir / "status.json").write_text(json.dumps(status))
        backend = status["validation"]["backend"]
        timings = {"brian2": {"build": 2.0, "simulate": 1.0}, "mirror:float64": {"simulate": 3.0}}
        (run_dir / f"validation_{backend}.json").write_text(json.dumps({"timings_s": timings, "simulators": {}}))


def test_merge_joins_the_steps_and_the_protocols_runs_into_one_report(tmp_path: Path) -> None:
    parts = tmp_path / "parts"
    parts.mkdir()
    (parts / "install.json").write_text(json.dumps({"could_not_install": ["brian2cuda (offline)"]}))
    probe = {"probe": {"adam_step_s": 1.5, "time_step_ms": 0.75}, "choice": {"epochs": 3, "tier_epochs": 100}}
    _step(parts, "protocol_probe", "ok", probe)
    _step(parts, "protocol", "timeout")
    _step(parts, "protocol_validate", "ok")
    protocol_dir = tmp_path / "protocol"
    validated = {
        "status": "completed",
        "elapsed_s": 50.0,
        "validation": {"backend": "cpp_standalone", "verdict": "pass"},
    }
    _protocol_run(protocol_dir, "frozen_ping/seed_42", [30.0, 12.0, 10.0, 11.0], validated)
    _protocol_run(protocol_dir, "trainable_zero_init/seed_42", [30.0, 13.0, 9.0])  # still training
    _step(
        parts,
        "brian2_cuda_copies",
        "ok",
        {"backend": "cuda_standalone", "build_s": 60.0, "simulate_s": 0.4, "total_s": 60.4},
    )
    _step(
        parts,
        "brian2_cpp_p16",
        "ok",
        {"backend": "cpp_standalone", "build_s": 10.0, "simulate_s": 1.0, "total_s": 11.0},
    )
    _step(
        parts, "brian2_cpp_p1", "ok", {"backend": "cpp_standalone", "build_s": 1.0, "simulate_s": 12.0, "total_s": 13.0}
    )
    comparison = {
        "identical": True,
        "identity_fraction": 1.0,
        "trials": {"verdict": "identical", "identical_trials": 400},
    }
    _step(parts, "crosscheck", "ok", {"backends": {"cuda_standalone_copies": comparison}})
    _step(parts, "bench", "ok", {"speedup": 30.0, "grad_max_rel_diff": 1e-15})
    _step(parts, "bench_fused", "skipped", why="biosim.environment does not know BIOSIM_CUDA_TRITON")
    out = tmp_path / "gpu_check.json"

    report = merge(parts, out, meta={"budget_s": 480}, protocol_dir=protocol_dir)

    assert json.loads(out.read_text()) == report
    assert report["gpu"] is True and report["budget_s"] == 480
    assert report["install"]["could_not_install"] == ["brian2cuda (offline)"]
    assert report["steps"]["bench"]["log_tail"] == ["line one of bench", "last line of bench"]
    assert list(report["steps"])[:3] == ["protocol_probe", "protocol", "protocol_validate"]
    runs = report["protocol"]["runs"]
    assert runs["frozen_ping/seed_42"]["epochs"][1] == {"epoch": 1, "wall_time_s": 12.0, "test_accuracy": 0.1}
    assert runs["frozen_ping/seed_42"]["validation"]["timings_s"]["brian2"]["build"] == 2.0
    assert runs["trainable_zero_init/seed_42"]["status"] == "running or stopped"
    summary = report["summary"]
    assert summary["protocol_epochs_chosen"] == 3 and summary["protocol_epochs_done_min"] == 2
    assert summary["protocol_epoch_s_each"] == [13.0, 10.0, 11.0]  # each round: its slowest run
    assert summary["protocol_adam_step_s"] == 1.5 and summary["protocol_time_step_ms"] == 0.75
    assert summary["protocol_runs_validated"] == 1 and summary["protocol_validation_pass"] == 1
    assert summary["protocol_validation_brian2_s_mean"] == 3.0
    assert summary["speedup_cuda_copies_vs_cpp_p1"] == pytest.approx(30.0)
    assert summary["speedup_cuda_copies_vs_cpp_p16"] == pytest.approx(2.5)
    assert summary["speedup_cpp_p16_vs_cpp_p1"] == pytest.approx(12.0)
    assert summary["speedup_cuda_copies_vs_cpp_p1_with_build"] == pytest.approx(13.0 / 60.4)
    assert summary["cuda_standalone_meets_target"] is (30.0 >= TARGETS["cuda_standalone_speedup"])
    assert summary["cuda_standalone_copies_identity_verdict"] == "identical"
    assert summary["bench_speedup"] == 30.0 and "bench_fused_speedup" not in summary
    assert summary["steps_not_ok"] == ["bench_fused", "protocol"]


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
    assert report["gpu"] is True and report["state"] == "complete" and report["rehearsal"] is False
    assert set(report["tools"]) == {"make", "g++", "nvcc"}
    assert "cannot use the GPU" in report["steps"]["train_epoch"]["why"]
    # The device tool returns at most 8 files from $OUT: the report and one archive of the step files and logs.
    assert sorted(p.name for p in out.iterdir()) == ["gpu_check.json", "gpu_check_logs.tar.gz"]
    with tarfile.open(out / "gpu_check_logs.tar.gz") as archive:
        names = set(archive.getnames())
    assert {"parts/train_epoch.step.json", "parts/install.log"} <= names
