"""biosim.environment: every variable the project reads, checked before any work."""

from __future__ import annotations

import pytest

from biosim import environment
from biosim.environment import VARIABLES, check_environment, markdown_table, switch


@pytest.mark.parametrize("value", ["1", "on", "ON", "yes", "true", " True "])
def test_switch_accepts_the_usual_spellings_of_on(monkeypatch, value):
    monkeypatch.setenv("BIOSIM_FUSED_KERNELS", value)
    assert switch("BIOSIM_FUSED_KERNELS") is True


@pytest.mark.parametrize("value", ["0", "off", "Off", "no", "false", "FALSE"])
def test_switch_accepts_the_usual_spellings_of_off(monkeypatch, value):
    monkeypatch.setenv("BIOSIM_FUSED_KERNELS", value)
    assert switch("BIOSIM_FUSED_KERNELS") is False


def test_switch_defaults_when_unset(monkeypatch):
    monkeypatch.delenv("BIOSIM_FUSED_KERNELS", raising=False)
    assert switch("BIOSIM_FUSED_KERNELS") is True


def test_switch_refuses_anything_else_naming_the_variable(monkeypatch):
    monkeypatch.setenv("BIOSIM_BRIAN2_PCH", "maybe")
    with pytest.raises(ValueError, match="BIOSIM_BRIAN2_PCH='maybe'"):
        switch("BIOSIM_BRIAN2_PCH")


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("BIOSIM_KERNEL_ISA", "avx9000", "expected one of native, avx2"),
        ("BIOSIM_FUSED_KERNELS", "nope", "expected one of"),
        ("BIOSIM_BRIAN2_PROCESSES", "0", "at least 1"),
        ("BIOSIM_BRIAN2_PROCESSES", "two", "at least 1"),
        ("ATEN_CPU_CAPABILITY", "avx9000", "expected one of default, avx2, avx512"),
    ],
)
def test_bad_values_are_refused_naming_the_variable(name, value, message):
    with pytest.raises(ValueError, match=rf"{name}='{value}'.*{message}"):
        check_environment({name: value})


def test_a_cache_that_is_a_file_is_refused(tmp_path):
    occupied = tmp_path / "a_file"
    occupied.write_text("")
    for name in ("BIOSIM_KERNEL_CACHE", "BIOSIM_BRIAN2_CACHE"):
        with pytest.raises(ValueError, match=rf"{name}=.*cannot be used as a directory"):
            check_environment({name: str(occupied)})
    with pytest.raises(ValueError, match="BIOSIM_KERNEL_CACHE"):
        check_environment({"BIOSIM_KERNEL_CACHE": str(occupied / "below")})


def test_a_cache_under_proc_is_refused():
    with pytest.raises(ValueError, match="BIOSIM_KERNEL_CACHE='/proc/kc'"):
        check_environment({"BIOSIM_KERNEL_CACHE": "/proc/kc"})


def test_good_values_pass_and_a_missing_cache_is_created(tmp_path):
    cache = tmp_path / "new" / "cache"
    check_environment(
        {
            "BIOSIM_KERNEL_ISA": "avx2",
            "BIOSIM_FUSED_KERNELS": "off",
            "BIOSIM_KERNEL_CACHE": str(cache),
            "BIOSIM_BRIAN2_CACHE": "off",
            "BIOSIM_BRIAN2_PROCESSES": "auto",
            "ATEN_CPU_CAPABILITY": "avx2",
        }
    )
    assert cache.is_dir()


def test_every_variable_the_code_reads_is_in_the_table():
    """A grep of the package sources: a BIOSIM_ variable read anywhere must be declared here."""
    import re
    from pathlib import Path

    root = Path(environment.__file__).resolve().parents[1]
    read = set()
    for package in ("biosim", "bridge", "protocols", "benchmarks"):
        for path in (root / package).rglob("*.py"):
            read |= set(re.findall(r"\b(BIOSIM_[A-Z0-9_]+)\b", path.read_text()))
    declared = {v.name for v in VARIABLES}
    # a make variable of the generated makefile, and the prefix of the C++ struct field lists: not environment variables
    internal = {"BIOSIM_SETUP_OBJS", "BIOSIM_FIELDS_"}
    assert read - internal <= declared, sorted(read - internal - declared)
    table = markdown_table()
    assert all(f"`{name}`" in table for name in declared)


def test_the_readme_lists_every_variable():
    """The README's table is :func:`markdown_table` as it is now."""
    from pathlib import Path

    readme = (Path(environment.__file__).resolve().parents[1] / "README.md").read_text()
    block = readme.split("<!-- environment table: begin -->\n", 1)[1].split("\n<!-- environment table: end -->", 1)[0]
    assert block == markdown_table()
