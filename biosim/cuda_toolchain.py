"""Make brian2cuda's ``cuda_standalone`` device compile and link on CUDA 13.

brian2cuda 1.0a7 was written for CUDA 11/12. With CUDA 13 (and on machines
without a GPU) its defaults fail in three places; :func:`configure_cuda_standalone`
fixes all of them through Brian2/brian2cuda *preferences* only:

1. **C++17.** CUDA 13's Thrust/CUB stop with ``#error ... requires at least
   C++17``. brian2cuda's makefile template hard-codes ``-std=c++11`` in
   ``NVCCFLAGS``; ``-std=c++17`` is appended through
   ``devices.cuda_standalone.cuda_backend.extra_compile_args_nvcc``, which the
   template places *after* the hard-coded flag, and nvcc uses the last value
   (it prints ``nvcc warning : incompatible redefinition for option 'std'``
   once per file; harmless, and ``-w`` cannot silence it). Brian2's host flags
   (``codegen.cpp.extra_compile_args_gcc``) also carry ``-std=c++11``; they
   reach g++ through ``-Xcompiler`` *after* nvcc's own ``-std``, so they are
   rewritten to ``-std=c++17`` as well. This also affects Brian2's other C++
   targets in the same process, which compile fine as C++17.
2. **cuRAND.** The makefile always links ``-lcurand``. A full CUDA toolkit
   ships ``curand.h`` and ``libcurand.so``; the toolkit here (assembled from
   NVIDIA's pip wheels) does not, so they come from the ``nvidia-curand`` wheel
   (see ``requirements/cuda-compile.txt``). That wheel only has
   ``libcurand.so.10``, so the link name ``libcurand.so`` is created as a
   symlink in a cache directory (``$XDG_CACHE_HOME/biosim/cuda-link/...``,
   never inside site-packages) that goes on the ``-L`` path; the wheel's real
   library directory goes on the rpath so the binary finds
   ``libcurand.so.10`` without ``LD_LIBRARY_PATH``.
3. **No GPU.** brian2cuda asks ``nvidia-smi`` for the GPU and its compute
   capability. Without a GPU (or with ``compile_only=True``) detection is
   switched off and GPU 0 with an explicit compute capability (default 9.0,
   H100) is used.

No ``prepare_build_directory`` post-processing step is needed: every fix above
is a preference, so the generated makefile is used as brian2cuda writes it.

Caveat: Brian2's default host flags include ``-march=native``, so the host part
of a binary compiled on one machine may not run on a different CPU; compile on
the machine that runs it (the GPU machine) for real runs.

:func:`compile_check` builds a network on ``cuda_standalone`` (compile, no
run) in a child process, because a Brian2 standalone device can be built only
once per process; the parent's device and preferences are left untouched.
Command line::

    python -m biosim.cuda_toolchain --compile-check DIR [--compute-capability 9.0]
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import importlib.metadata
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from biosim.environment import switch

__all__ = [
    "DEFAULT_COMPUTE_CAPABILITY",
    "CudaToolchain",
    "CudaToolchainError",
    "compile_check",
    "configure_cuda_standalone",
    "find_toolchain",
    "toy_network",
]

DEFAULT_COMPUTE_CAPABILITY = 9.0
"""Compute capability compiled for when no GPU is detected (9.0 = H100)."""

CURAND_DISTRIBUTION = "nvidia-curand"
# Keep the version in sync with requirements/cuda-compile.txt.
CURAND_INSTALL_HINT = "pip install -r requirements/cuda-compile.txt  (i.e. pip install nvidia-curand==10.4.0.35)"

_DEFAULT_NVCC = Path("/usr/local/cuda/bin/nvcc")  # brian2cuda's last resort, too
_MODULE = "biosim.cuda_toolchain"  # for ``python -m`` in the child process
_RESULT_MARKER = "COMPILE_CHECK_RESULT "


class CudaToolchainError(RuntimeError):
    """The CUDA toolchain is incomplete, or a compile check failed."""


@dataclass(frozen=True)
class CudaToolchain:
    """What :func:`find_toolchain` found and :func:`configure_cuda_standalone` uses."""

    nvcc: Path
    """The nvcc binary brian2cuda will call (``cuda_path / "bin" / "nvcc"``)."""
    cuda_path: Path
    """CUDA installation root, as reported by nvcc itself."""
    cuda_version: float
    """CUDA release, e.g. ``13.0``."""
    curand_include_dir: Path
    """Directory holding ``curand.h``."""
    curand_library: Path
    """The cuRAND shared library linked against (``libcurand.so.10`` from the wheel)."""
    curand_library_dir: Path
    """Its directory (put on the rpath)."""
    link_dir: Path
    """Directory holding (after :func:`configure_cuda_standalone`) the link name ``libcurand.so``."""
    compute_capability: float | None
    """Target compute capability; ``None`` means brian2cuda takes the detected GPU's."""
    detect_gpus: bool
    """Whether brian2cuda's GPU detection (``nvidia-smi``) stays on."""


# --- discovery (no side effects) --------------------------------------------


def _find_nvcc(cuda_path_pref: str | None) -> Path:
    """Locate nvcc the way brian2cuda does: preference, ``$CUDA_PATH``, ``PATH``, /usr/local/cuda."""
    candidates: list[tuple[str, Path]] = []
    if cuda_path_pref:
        candidates.append(("preference cuda_backend.cuda_path", Path(cuda_path_pref).expanduser() / "bin" / "nvcc"))
    if os.environ.get("CUDA_PATH"):
        candidates.append(("$CUDA_PATH", Path(os.environ["CUDA_PATH"]) / "bin" / "nvcc"))
    on_path = shutil.which("nvcc")
    if on_path:
        candidates.append(("PATH", Path(on_path)))
    candidates.append(("default location", _DEFAULT_NVCC))
    for _, path in candidates:
        if path.is_file() and os.access(path, os.X_OK):
            return path
    tried = "; ".join(f"{where}: {path}" for where, path in candidates)
    raise CudaToolchainError(
        f"nvcc not found (tried {tried}). Install the CUDA toolkit, or point "
        "$CUDA_PATH or prefs.devices.cuda_standalone.cuda_backend.cuda_path at it."
    )


def _run(*command: str | Path) -> str:
    result = subprocess.run([str(c) for c in command], check=False, capture_output=True, text=True, timeout=60)
    return result.stdout + result.stderr


def _cuda_root_and_version(nvcc: Path) -> tuple[Path, float]:
    # nvcc may be a wrapper script (here /usr/local/bin/nvcc), so ask nvcc where
    # its toolkit lives instead of trusting the binary's parent directory.
    match = re.search(r"release (\d+\.\d+)", _run(nvcc, "--version"))
    if match is None:
        raise CudaToolchainError(f"cannot read the CUDA release from `{nvcc} --version`")
    top = re.search(r"^#\$ TOP=(.+)$", _run(nvcc, "--dryrun", "-x", "cu", "-E", os.devnull), re.MULTILINE)
    root = Path(top.group(1)).resolve() if top else nvcc.resolve().parent.parent
    return root, float(match.group(1))


def _find_curand(cuda_root: Path) -> tuple[Path, Path, bool]:
    """Return ``(include_dir, library, needs_link)`` from the toolkit, else from the wheel."""
    for lib_dir in (cuda_root / "lib64", cuda_root / "lib"):
        if (cuda_root / "include" / "curand.h").is_file() and (lib_dir / "libcurand.so").exists():
            return cuda_root / "include", lib_dir / "libcurand.so", False  # a full toolkit
    try:
        files = importlib.metadata.distribution(CURAND_DISTRIBUTION).files or []
    except importlib.metadata.PackageNotFoundError:
        files = None
    if files is not None:
        header = next((f for f in files if f.name == "curand.h"), None)
        library = next((f for f in files if f.name.startswith("libcurand.so.")), None)
        if header is not None and library is not None:
            return Path(header.locate()).parent, Path(library.locate()), True
    state = "is not installed" if files is None else "lacks curand.h or libcurand.so.*"
    raise CudaToolchainError(
        f"cuRAND not found: the CUDA toolkit at {cuda_root} has no include/curand.h + lib64/libcurand.so, "
        f"and the Python package {CURAND_DISTRIBUTION!r} {state} in {sys.prefix}. "
        f"Install it with: {CURAND_INSTALL_HINT}"
    )


def _link_dir_for(real_library: Path) -> Path:
    # One directory per wheel location, so venvs sharing a cache never fight over the link.
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    key = hashlib.sha1(str(real_library).encode()).hexdigest()[:12]
    return cache / "biosim" / "cuda-link" / key


def _gpu_visible() -> bool:
    if shutil.which("nvidia-smi") is None:
        return False
    try:
        return any(line.startswith("GPU ") for line in _run("nvidia-smi", "-L").splitlines())
    except (OSError, subprocess.SubprocessError):
        return False


def find_toolchain(*, compute_capability: float | None = None, compile_only: bool = False) -> CudaToolchain:
    """Detect nvcc, the CUDA version, cuRAND and the target GPU, changing nothing.

    Parameters
    ----------
    compute_capability
        Target compute capability, e.g. ``9.0`` (H100) or ``8.0`` (A100). ``None``
        means: the detected GPU's, or :data:`DEFAULT_COMPUTE_CAPABILITY` when
        GPU detection is off.
    compile_only
        Switch GPU detection off even if a GPU is visible.

    Returns
    -------
    CudaToolchain
        The toolchain :func:`configure_cuda_standalone` would configure.

    Raises
    ------
    CudaToolchainError
        If nvcc or cuRAND is missing, or nvcc cannot compile for ``compute_capability``.
    """
    import brian2cuda  # noqa: F401  (registers the cuda_standalone preferences)
    from brian2 import prefs

    nvcc = _find_nvcc(prefs.devices.cuda_standalone.cuda_backend.cuda_path)
    cuda_root, cuda_version = _cuda_root_and_version(nvcc)
    include_dir, library, needs_link = _find_curand(cuda_root)
    detect_gpus = not compile_only and _gpu_visible()
    if compute_capability is None and not detect_gpus:
        compute_capability = DEFAULT_COMPUTE_CAPABILITY
    if compute_capability is not None:
        compute_capability = float(compute_capability)  # brian2cuda's validator rejects ints
        arch = "sm_" + f"{compute_capability:.1f}".replace(".", "")
        supported = _run(nvcc, "--list-gpu-code").split()
        if arch not in supported:
            raise CudaToolchainError(
                f"CUDA {cuda_version} ({nvcc}) cannot compile for compute capability "
                f"{compute_capability} ({arch}); it supports {' '.join(supported)}"
            )
    return CudaToolchain(
        nvcc=cuda_root / "bin" / "nvcc",
        cuda_path=cuda_root,
        cuda_version=cuda_version,
        curand_include_dir=include_dir,
        curand_library=library,
        curand_library_dir=library.parent,
        link_dir=_link_dir_for(library) if needs_link else library.parent,
        compute_capability=compute_capability,
        detect_gpus=detect_gpus,
    )


# --- configuration ------------------------------------------------------------


def _ensure_link(link_dir: Path, target: Path) -> None:
    link = link_dir / "libcurand.so"
    if link.is_symlink() and link.resolve() == target.resolve():
        return
    link_dir.mkdir(parents=True, exist_ok=True)
    tmp = link_dir / f".libcurand.so.{os.getpid()}"
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(target)
    os.replace(tmp, link)  # atomic, so concurrent processes never see a half-made link


def _is_std_flag(flag: str) -> bool:
    return flag.startswith(("-std=", "--std"))


FAST_MATH = "-use_fast_math"
"""brian2cuda's default nvcc flag that the exact mode (``BIOSIM_CUDA_EXACT``) takes out."""

EXACT_NVCC_FLAGS = ("--fmad=false", "--prec-div=true", "--prec-sqrt=true", "--ftz=false")
"""nvcc flags of the exact mode: no contraction into FMAs, IEEE division and square root, no flush to zero."""


def _registered_nvcc_flags() -> list[str]:
    """brian2cuda's own default nvcc flags (as registered, whatever the preferences hold now)."""
    from brian2 import prefs

    return list(prefs.pref_register["devices.cuda_standalone.cuda_backend"][0]["extra_compile_args_nvcc"].default)


def _with(flags: list[str], extra: str, drop: Callable[[str], bool] = lambda f: False) -> list[str]:
    """``flags`` without the ones ``drop`` matches, with ``extra`` once at the end (idempotent)."""
    return [f for f in flags if f != extra and not drop(f)] + [extra]


def configure_cuda_standalone(*, compute_capability: float | None = None, compile_only: bool = False) -> CudaToolchain:
    """Set the Brian2/brian2cuda preferences that make ``cuda_standalone`` build on CUDA 13.

    Call it before the network is created and run (brian2cuda reads some of
    these preferences while generating code); whether ``set_device`` comes
    before or after does not matter. Calling it again is harmless: flags and
    directories are never added twice, and the latest arguments win.

    Parameters
    ----------
    compute_capability
        Target compute capability (``9.0`` = H100). ``None``: the detected
        GPU's, or :data:`DEFAULT_COMPUTE_CAPABILITY` when no GPU is visible.
    compile_only
        Switch GPU detection off even if a GPU is visible (code generation and
        compilation only, e.g. on a build machine).

    Returns
    -------
    CudaToolchain
        What was found and configured.

    Raises
    ------
    CudaToolchainError
        If nvcc or cuRAND is missing, or the compute capability is unsupported.
    """
    from brian2 import prefs
    from brian2cuda.utils import gputools

    toolchain = find_toolchain(compute_capability=compute_capability, compile_only=compile_only)
    if toolchain.link_dir != toolchain.curand_library_dir:
        _ensure_link(toolchain.link_dir, toolchain.curand_library)

    cpp = prefs.codegen.cpp
    cpp.extra_compile_args_gcc = _with(list(cpp.extra_compile_args_gcc), "-std=c++17", _is_std_flag)
    cpp.include_dirs = _with(list(cpp.include_dirs), str(toolchain.curand_include_dir))
    cpp.library_dirs = _with(list(cpp.library_dirs), str(toolchain.link_dir))
    cpp.runtime_library_dirs = _with(list(cpp.runtime_library_dirs), str(toolchain.curand_library_dir))

    backend = prefs.devices.cuda_standalone.cuda_backend
    backend.extra_compile_args_nvcc = _with(list(backend.extra_compile_args_nvcc), "-std=c++17", _is_std_flag)
    nvcc_flags = [f for f in backend.extra_compile_args_nvcc if f not in (*EXACT_NVCC_FLAGS, FAST_MATH)]
    if switch("BIOSIM_CUDA_EXACT"):
        # brian2cuda compiles with -use_fast_math, which also lets nvcc contract a * b + c into one FMA:
        # other roundings than the CPU's. The exact mode asks for IEEE division, square root and no FMAs.
        nvcc_flags += list(EXACT_NVCC_FLAGS)
    elif FAST_MATH in backend.extra_compile_args_nvcc or FAST_MATH in _registered_nvcc_flags():
        nvcc_flags.insert(0, FAST_MATH)  # brian2cuda's default again, where the exact mode took it out
    backend.extra_compile_args_nvcc = nvcc_flags
    backend.cuda_path = str(toolchain.cuda_path)
    backend.cuda_runtime_version = toolchain.cuda_version
    backend.detect_gpus = toolchain.detect_gpus
    backend.compute_capability = toolchain.compute_capability
    if not toolchain.detect_gpus and backend.gpu_id is None:
        backend.gpu_id = 0  # brian2cuda requires an explicit id when detection is off

    # brian2cuda caches what it detected once per process; forget it so the
    # preferences above take effect even if it already looked.
    gputools.reset_cuda_installation()
    gputools.reset_gpu_selection()
    return toolchain


# --- compile check ----------------------------------------------------------------


def toy_network() -> Any:
    """A small network using the features the real model needs (returns a ``brian2.Network``).

    Conductance-based LIF neurons (exponential Euler, threshold/reset/refractory),
    a ``SpikeGeneratorGroup`` input through ``Synapses``, recurrent inhibition with
    random delays, a ``TimedArray`` read by ``run_regularly``, random
    initialisation (cuRAND) and a ``SpikeMonitor``.
    """
    import brian2 as b2
    import numpy as np

    from biosim.params import NetworkParams, to_brian2_namespace

    namespace = to_brian2_namespace(NetworkParams(), "e")
    namespace["bias"] = b2.TimedArray(np.linspace(0.0, 0.5, 10) * b2.nS, dt=10 * b2.ms)
    neurons = b2.NeuronGroup(
        200,
        """dv/dt = (g_leak*(e_leak - v) + ge*(e_exc - v) + gi*(e_inh - v))/c_m : volt (unless refractory)
           dge/dt = -ge/tau_ampa : siemens
           dgi/dt = -gi/tau_gaba : siemens""",
        threshold="v > v_threshold",
        reset="v = v_reset",
        refractory=namespace["refractory"],
        method="exponential_euler",
        namespace=namespace,
        name="neurons",
    )
    neurons.v = "e_leak + rand()*(v_threshold - e_leak)"
    neurons.run_regularly("ge += bias(t)", dt=1 * b2.ms, name="neurons_bias")

    rng = np.random.default_rng(0)
    n_input, n_spikes = 50, 500
    inputs = b2.SpikeGeneratorGroup(
        n_input, rng.integers(0, n_input, n_spikes), np.sort(rng.uniform(0, 90, n_spikes)) * b2.ms, name="inputs"
    )
    feedforward = b2.Synapses(inputs, neurons, "w : siemens", on_pre="ge_post += w", name="feedforward")
    feedforward.connect(p=0.1)
    feedforward.w = "2*nS * rand()"
    recurrent = b2.Synapses(neurons, neurons, "w : siemens", on_pre="gi_post += w", name="recurrent")
    recurrent.connect(p=0.05)
    recurrent.w = 1 * b2.nS
    recurrent.delay = "0.5*ms + rand()*1*ms"
    spikes = b2.SpikeMonitor(neurons, name="spikes")
    return b2.Network(neurons, inputs, feedforward, recurrent, spikes)


def _jsonable(toolchain: CudaToolchain) -> dict[str, Any]:
    return {k: str(v) if isinstance(v, Path) else v for k, v in asdict(toolchain).items()}


def _reference(build_network: Callable[[], Any]) -> str:
    """``module:qualname`` of a function the child process can import."""
    module, name = getattr(build_network, "__module__", None), getattr(build_network, "__qualname__", "")
    if not module or module == "__main__" or "<" in name:
        raise ValueError(
            f"build_network must be a module-level function importable by a child process, got {build_network!r}"
        )
    return f"{module}:{name}"


def _resolve(reference: str) -> Callable[[], Any]:
    module, _, name = reference.partition(":")
    target: Any = importlib.import_module(module)
    for part in name.split("."):
        target = getattr(target, part)
    return target


def _makefile_flags(makefile: Path) -> dict[str, str]:
    wanted = ("NVCC", "NVCCFLAGS", "LFLAGS")
    flags = {}
    for line in makefile.read_text().splitlines():
        key, sep, value = line.partition(" = ")
        if sep and key in wanted:
            flags[key] = value.strip()
    return flags


def _compile_here(directory: Path, compute_capability: float, reference: str, duration_ms: float) -> dict[str, Any]:
    """Child-process side of :func:`compile_check`: generate and compile, do not run."""
    import brian2 as b2

    toolchain = configure_cuda_standalone(compute_capability=compute_capability, compile_only=True)
    b2.set_device("cuda_standalone", build_on_run=False)
    b2.prefs.logging.std_redirection = False  # compiler output straight to the parent's log
    b2.prefs.devices.cpp_standalone.extra_make_args_unix = [f"-j{os.cpu_count() or 1}"]

    start = time.perf_counter()
    network = _resolve(reference)()
    if isinstance(network, b2.Network):  # otherwise build_network ran it already
        network.run(duration_ms * b2.ms)
    b2.device.build(directory=str(directory), compile=True, run=False, clean=True)
    total = time.perf_counter() - start
    make_seconds = b2.device.timers["compile"]["make"]
    return {
        "binary": str(directory / "main"),
        "codegen_seconds": total - make_seconds,
        "make_seconds": make_seconds,
        "makefile": _makefile_flags(directory / "makefile"),
        "toolchain": _jsonable(toolchain),
    }


def compile_check(
    directory: str | os.PathLike[str],
    *,
    compute_capability: float = DEFAULT_COMPUTE_CAPABILITY,
    build_network: Callable[[], Any] | None = None,
    duration_ms: float = 100.0,
    timeout_s: float | None = None,
) -> dict[str, Any]:
    """Generate and compile a network on ``cuda_standalone`` in a child process, without running it.

    The child calls :func:`configure_cuda_standalone` with ``compile_only=True``,
    builds the network, and calls ``device.build(compile=True, run=False,
    clean=True)``. This process's Brian2 device and preferences are untouched.

    Parameters
    ----------
    directory
        Brian2 project directory (created if missing; overwritten). The child's
        full output goes to ``directory/compile_check.log``.
    compute_capability
        Target compute capability (9.0 = H100).
    build_network
        Module-level function (the child imports it by name) that creates the
        Brian2 objects and returns a ``Network``, which is then run for
        ``duration_ms``; if it returns anything else it must have called
        ``run`` itself. Default: :func:`toy_network`.
    duration_ms
        Simulated duration baked into the generated code.
    timeout_s
        Give up after this many seconds (``None``: no limit).

    Returns
    -------
    dict
        ``binary`` (path of the executable), ``wall_seconds`` (whole child
        process), ``codegen_seconds``, ``make_seconds``, ``makefile`` (its
        ``NVCC``/``NVCCFLAGS``/``LFLAGS`` lines), ``toolchain`` and ``log``.

    Raises
    ------
    CudaToolchainError
        If the toolchain is incomplete, or generation/compilation fails (the
        message ends with the tail of the compiler output).
    """
    find_toolchain(compute_capability=compute_capability, compile_only=True)  # fail fast, in this process
    reference = _reference(build_network or toy_network)
    directory = Path(directory).resolve()
    directory.mkdir(parents=True, exist_ok=True)
    log = directory / "compile_check.log"
    command = [sys.executable, "-m", _MODULE, "--compile-check", str(directory),
               "--compute-capability", str(compute_capability), "--network", reference,
               "--duration-ms", str(duration_ms)]  # fmt: skip
    # The child must import biosim and build_network's module exactly as we do.
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(os.path.abspath(p or os.curdir) for p in sys.path))

    start = time.perf_counter()
    # Own process group, so a timeout or Ctrl-C also stops make and the nvcc processes.
    with (
        log.open("w") as out,
        subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True) as child,
    ):
        try:
            returncode: int | None = child.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            returncode = None
        finally:
            if child.poll() is None:
                os.killpg(child.pid, signal.SIGKILL)
                child.wait()
    wall = time.perf_counter() - start

    lines = log.read_text(errors="replace").splitlines()
    results = [line for line in lines if line.startswith(_RESULT_MARKER)]
    if returncode != 0 or not results:
        why = f"timed out after {timeout_s} s" if returncode is None else f"exit status {returncode}"
        tail = "\n".join(lines[-60:])
        raise CudaToolchainError(f"cuda_standalone compile check failed ({why}); end of {log}:\n{tail}")
    result = json.loads(results[-1][len(_RESULT_MARKER) :])
    if not Path(result["binary"]).is_file():
        raise CudaToolchainError(f"compilation reported success but {result['binary']} is missing; see {log}")
    return {**result, "wall_seconds": wall, "log": str(log)}


def main(argv: list[str] | None = None) -> int:
    """Command line: ``--compile-check DIR`` (child of :func:`compile_check`) or ``--info``."""
    parser = argparse.ArgumentParser(prog=f"python -m {_MODULE}", description=main.__doc__)
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--compile-check", metavar="DIR", type=Path, help="generate and compile into DIR")
    action.add_argument("--info", action="store_true", help="print the detected toolchain")
    parser.add_argument("--compute-capability", type=float, default=DEFAULT_COMPUTE_CAPABILITY)
    parser.add_argument("--network", default=f"{_MODULE}:toy_network", help="module:function building the network")
    parser.add_argument("--duration-ms", type=float, default=100.0)
    args = parser.parse_args(argv)
    try:
        if args.info:
            toolchain = find_toolchain(compute_capability=args.compute_capability, compile_only=True)
            print(json.dumps(_jsonable(toolchain), indent=2))
        else:
            directory = args.compile_check.resolve()
            result = _compile_here(directory, args.compute_capability, args.network, args.duration_ms)
            print(_RESULT_MARKER + json.dumps(result), flush=True)
    except CudaToolchainError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
