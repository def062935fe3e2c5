"""Every environment variable the project reads, in one table, checked when a command starts.

A setting that is misspelt, or points to a directory that cannot be used,
must not quietly change what a run computes (the fused engine falling back
to its torch implementation gives other float32 bits) or how long it takes
(a Brian2 cache that cannot be written makes every evaluation a cold
build). :func:`check_environment` refuses such values before any work, with
the variable's name; :func:`switch` is the one parser of on/off values.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

__all__ = ["VARIABLES", "Variable", "check_environment", "check_variable", "markdown_table", "switch"]

_ON = ("1", "on", "yes", "true")
_OFF = ("0", "off", "no", "false")


def _switch_error(value: str) -> str | None:
    if value.strip().lower() in _ON + _OFF:
        return None
    return f"expected one of {', '.join(_ON + _OFF)}"


def _choice(*choices: str) -> Callable[[str], str | None]:
    def check(value: str) -> str | None:
        return None if value in choices else f"expected one of {', '.join(choices)}"

    return check


def _processes_error(value: str) -> str | None:
    value = value.strip().lower()
    if value in ("", "auto") or (value.isdigit() and int(value) >= 1):
        return None
    return "expected a whole number of at least 1, or auto"


def _directory_error(value: str) -> str | None:
    """A directory that can be created and written to (tried: permission bits do not bind root)."""
    path = Path(value).expanduser()
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".biosim-write-check-"):
            pass
    except OSError as error:
        return f"cannot be used as a directory ({error.strerror or error})"
    return None


def _cache_error(value: str) -> str | None:
    return None if value.strip().lower() in ("", "none", *_OFF) else _directory_error(value)


@dataclass(frozen=True)
class Variable:
    """One environment variable: its default, what it does, and how a value is checked (None: not checked)."""

    name: str
    default: str
    meaning: str
    check: Callable[[str], str | None] | None = None


VARIABLES: tuple[Variable, ...] = (
    Variable(
        "BIOSIM_FUSED_KERNELS",
        "on",
        "off: the fused engine runs its torch implementation instead of its C++ kernels (other float32 bits)",
        _switch_error,
    ),
    Variable(
        "BIOSIM_KERNEL_ISA",
        "native",
        "avx2: kernels built without AVX-512 (same bits)",
        _choice("native", "avx2"),
    ),
    Variable("BIOSIM_KERNEL_CACHE", "~/.cache/biosim/kernels", "where the compiled kernels are kept", _directory_error),
    Variable(
        "BIOSIM_BRIAN2_CACHE",
        "$XDG_CACHE_HOME/biosim/brian2",
        "where cpp_standalone projects are kept and reused; off: a new build each time",
        _cache_error,
    ),
    Variable(
        "BIOSIM_BRIAN2_PROCESSES",
        "1",
        "processes sharing one Brian2 evaluation (N or auto)",
        _processes_error,
    ),
    Variable("BIOSIM_BRIAN2_PCH", "on", "a precompiled header for cpp_standalone builds", _switch_error),
    Variable("BIOSIM_BRIAN2_VECTOR_EXP", "on", "glibc's vector exp in cpp_standalone state updates", _switch_error),
    Variable("BIOSIM_BRIAN2_SETUP_O1", "on", "cpp_standalone's set-up files at -O1 (faster builds)", _switch_error),
    Variable(
        "BIOSIM_CUDA_EXACT",
        "off",
        "on: cuda_standalone compiled without -use_fast_math, with --fmad=false and IEEE division and square root",
        _switch_error,
    ),
    Variable(
        "BIOSIM_CUDA_TRITON",
        "off",
        "on: the fused engine's torch path steps its populations and readout in Triton kernels (CUDA, or the CPU "
        "under TRITON_INTERPRET=1)",
        _switch_error,
    ),
    Variable(
        "BIOSIM_CUDA_GRAPHS",
        "off",
        "on: the fused engine's torch path replays each chunk of steps (forward, recompute) as a captured CUDA graph "
        "(CUDA only)",
        _switch_error,
    ),
    Variable("BIOSIM_VENV", ".venv", "where scripts/ensure_venv.sh creates the environment"),
    Variable("BIOSIM_FAULT_KILL_WORKER_ONCE", "unset", "the runner's own tests only: kill the first worker once"),
    Variable(
        "ATEN_CPU_CAPABILITY",
        "the CPU's",
        "read by PyTorch: avx2 pins its vectorised CPU path (docs/reproducibility.md)",
        _choice("default", "avx2", "avx512"),
    ),
)
"""The project's variables, and the one of PyTorch's that decides float32 bits between CPUs."""

_BY_NAME = {variable.name: variable for variable in VARIABLES}


def switch(name: str) -> bool:
    """An on/off variable of :data:`VARIABLES`: its value, or its default when unset."""
    value = os.environ.get(name, _BY_NAME[name].default).strip().lower()
    if value in _ON:
        return True
    if value in _OFF:
        return False
    raise ValueError(f"{name}={value!r}: {_switch_error(value)}")


def check_variable(name: str) -> str | None:
    """The set value of one variable of :data:`VARIABLES` (``None`` when unset), refused if its check rejects it."""
    value = os.environ.get(name)
    variable = _BY_NAME[name]
    if value is not None and variable.check is not None:
        problem = variable.check(value)
        if problem:
            raise ValueError(f"{name}={value!r}: {problem}")
    return value


def check_environment(environ: dict[str, str] | None = None) -> None:
    """Refuse, naming the variable, any set value of :data:`VARIABLES` that its check rejects."""
    environ = os.environ if environ is None else environ
    problems = []
    for variable in VARIABLES:
        value = environ.get(variable.name)
        if value is None or variable.check is None:
            continue
        problem = variable.check(value)
        if problem:
            problems.append(f"{variable.name}={value!r}: {problem}")
    if problems:
        raise ValueError("environment: " + "; ".join(problems))


def markdown_table() -> str:
    """:data:`VARIABLES` as the README's table."""
    rows = ["| variable | default | what it does |", "|---|---|---|"]
    rows += [f"| `{v.name}` | {v.default} | {v.meaning} |" for v in VARIABLES]
    return "\n".join(rows)
