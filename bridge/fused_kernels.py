"""The fused engine's CPU kernels: build, load and bind the C++ of ``csrc/fused_engine.cpp``.

:func:`kernel_library` compiles the C++ once per machine and source version
(the cache key holds the source text, the compiler and its flags, the torch
version and this CPU's model and feature flags), loads it with ctypes and
checks every struct the two sides share against the fields the library
exports (``biosim_struct_fields``): a mismatch is a ``RuntimeError`` naming the
struct, never silent memory corruption. Each struct's fields are declared
once, in its ``BIOSIM_FIELDS_`` list in the C++; the ctypes classes here are
built from the same lines (:func:`structs_from_source`) and filled by field
name (:func:`make_struct`); docs/engine.md says why ctypes rather than a
``TORCH_LIBRARY`` extension. When the kernels cannot be built, it
says why (no compiler, no MKL symbols in ``libtorch_cpu``, the compiler's
first lines) in one warning, and :mod:`bridge.fast_engine` runs its torch
implementation instead. The algorithm the kernels compute, and its adjoint,
are described in :mod:`bridge.fast_engine`.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from biosim.environment import switch

from .dynamics import PopulationConstants

__all__ = [
    "STRUCTS",
    "make_struct",
    "structs_from_source",
    "PRODUCT_PATHS",
    "KERNEL_SURROGATES",
    "STATE_NAMES",
    "KernelLibrary",
    "kernel_library",
    "kernels_available",
    "kernel_info",
    "fma_peak_flops",
    "product_flops",
    "PhaseTimes",
    "record_phase_times",
]


# --- CPU kernel library ---------------------------------------------------------

_KERNEL_SOURCE_PATH = Path(__file__).with_name("csrc") / "fused_engine.cpp"
"""The C++ of the CPU kernels; its text is part of the cache key of the compiled library."""

_COMPILER_FLAGS = (
    *("-O3", "-std=c++17", "-fPIC", "-shared", "-fopenmp"),
    *("-ffp-contract=off", "-fno-fast-math", "-fno-trapping-math"),
)
"""No fused multiply-adds and no reassociation: the kernels must round like separate torch operations.
``-fno-trapping-math`` changes no result (the kernels never unmask floating-point exceptions); it lets the
compiler evaluate both sides of a select, without which it leaves the surrogate loops unvectorised."""


_C_TYPES: dict[str, Any] = {"int64_t": ctypes.c_int64, "double": ctypes.c_double}
"""ctypes of the scalar field types the kernels' structs use; every pointer is a ``c_void_p``."""

_FIELD_LIST = re.compile(r"#define BIOSIM_FIELDS_(\w+)\(F\)((?:[^\n]*\\\n)*[^\n]*)")
_FIELD = re.compile(r"F\(\s*([^,()]+?)\s*,\s*(\w+)\s*\)")


def structs_from_source(source: str) -> dict[str, type[ctypes.Structure]]:
    """ctypes classes of the structs the kernels share, built from their field lists in the C++ source.

    Each struct's fields are declared once, in its ``BIOSIM_FIELDS_<Struct>(F)`` list of ``F(type, name)``
    entries (``csrc/fused_engine.cpp``), from which the C++ expands the struct itself and its exported
    layout (``biosim_struct_fields``); a type is ``int64_t``, ``double``, a pointer or an earlier struct.
    """
    structs: dict[str, type[ctypes.Structure]] = {}
    for name, body in _FIELD_LIST.findall(source):
        body = re.sub(r"/\*.*?\*/", "", body.replace("\\\n", " "), flags=re.S)
        fields = []
        for c_type, member in _FIELD.findall(body):
            if c_type.endswith("*"):
                fields.append((member, ctypes.c_void_p))
            elif c_type in _C_TYPES or c_type in structs:
                fields.append((member, _C_TYPES.get(c_type) or structs[c_type]))
            else:
                raise RuntimeError(f"{_KERNEL_SOURCE_PATH.name}: {name}.{member} has type {c_type!r}: no ctypes for it")
        structs[name] = type(name, (ctypes.Structure,), {"_fields_": fields})
    return structs


STRUCTS = structs_from_source(_KERNEL_SOURCE_PATH.read_text())
"""The ctypes copies of the kernels' structs, by their C++ names (built from the C++ field lists)."""
Population, Network, State = STRUCTS["Population"], STRUCTS["Network"], STRUCTS["State"]
ForwardBuffers, ChunkBuffers, ChunkExtras = STRUCTS["ForwardBuffers"], STRUCTS["ChunkBuffers"], STRUCTS["ChunkExtras"]
AdjointBuffers = STRUCTS["AdjointBuffers"]


@functools.cache
def _field_names(struct: type[ctypes.Structure]) -> frozenset[str]:
    return frozenset(name for name, _ in struct._fields_)


def make_struct(struct: type[ctypes.Structure], **fields: Any) -> ctypes.Structure:
    """``struct`` with every field given by name: a field missing or unknown is a ``TypeError`` naming it.

    Tensors may be given for pointer fields (their ``data_ptr()``; None: a null pointer).
    """
    names = _field_names(struct)
    if fields.keys() != names:
        missing, unknown = [n for n, _ in struct._fields_ if n not in fields], [n for n in fields if n not in names]
        raise TypeError(f"{struct.__name__}: missing fields {missing}, unknown fields {unknown}")
    return struct(**{name: address(v) if isinstance(v, torch.Tensor) else v for name, v in fields.items()})


GRADIENT_ACCUMULATORS = ("grad_in", "grad_ie", "grad_e_out", "grad_ee", "grad_ii")
"""The weight gradients the kernels' backward blocks add up, each into an accumulator of its own."""

KERNEL_SURROGATES = {"fast_sigmoid": 1, "sigmoid": 2, "atan": 3, "triangle": 4}
"""Surrogates whose derivative the CPU kernels evaluate (``Surrogate`` in the kernel source); the torch
implementation runs any other."""


STATE_NAMES = tuple(name for name, _ in State._fields_)
"""The state's tensors, in the order of the kernels' ``State``: ``v_e, ge_e, gi_e, ready_e, v_i, ..., ready_i``."""


def layout_mismatches(library: ctypes.CDLL, structs: dict[str, type] | None = None) -> list[str]:
    """Structs whose size, field names or offsets differ between the C++ (``biosim_struct_fields``) and ctypes."""
    describe = library.biosim_struct_fields
    describe.argtypes, describe.restype = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_int64], ctypes.c_int64
    mismatches = []
    for name, struct in (structs or STRUCTS).items():
        buffer = ctypes.create_string_buffer(max(1, describe(name.encode(), None, 0)))
        describe(name.encode(), buffer, len(buffer))
        native = buffer.value.decode()
        ours = ";".join(
            [str(ctypes.sizeof(struct))] + [f"{field} {getattr(struct, field).offset}" for field, _ in struct._fields_]
        )
        if native != ours:
            mismatches.append(f"{name}: size and offsets of its fields {native!r} in C++, {ours!r} in ctypes")
    return mismatches


def address(tensor: torch.Tensor | None) -> int | None:
    return None if tensor is None else tensor.data_ptr()


def state_struct(tensors: dict[str, torch.Tensor] | None) -> ctypes.Structure:
    """The kernels' ``State`` of the tensors by :data:`STATE_NAMES`; None: all null (not saved)."""
    if tensors is None:
        return State()
    return make_struct(State, **{name: tensors[name] for name in STATE_NAMES})


@dataclass(frozen=True)
class KernelLibrary:
    """The loaded CPU kernels, one function per dtype."""

    forward: dict[torch.dtype, Any]
    recompute: dict[torch.dtype, Any]
    adjoint_steps: dict[torch.dtype, Any]
    surrogate: dict[torch.dtype, Any]
    """The kernels' masked surrogate derivative, for tests: ``(network, n, x (in/out), integrating)``."""
    packed_sizes: Any
    pack_weights: Any
    control_word: Any
    """The calling thread's floating-point control word (flush-to-zero), -1 where there is none."""
    path: str
    fma_peak: Any
    """``(iterations, threads) -> flops`` of independent FMA chains (:func:`fma_peak_flops` times it)."""
    product_path: str
    """How the float32 products with the recurrent weights run: a key of :data:`PRODUCT_PATHS`."""
    product_seconds: Any
    """``(network, rows, repeats) -> seconds`` of the adjoint's two float32 products alone, one thread."""


def _cpu_description() -> str:
    """Model and feature flags of this CPU (part of the kernel cache key)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return ""
    return "\n".join(sorted({line for line in lines if line.startswith(("model name", "flags", "Features"))}))


def _torch_library_directory() -> Path:
    return Path(torch.__file__).resolve().parent / "lib"


_MKL_SYMBOLS = (
    "vmsExp",
    "vmdExp",
    "sgemm_",
    "dgemm_",
    "cblas_sgemm_pack_get_size",
    "cblas_sgemm_pack",
    "cblas_sgemm_compute",
    "MKL_Set_Num_Threads_Local",
)
"""What the kernels call in the MKL that ``libtorch_cpu`` carries."""


PRODUCT_PATHS = {
    "avx512": "AVX-512 register tiles (panels of 64 columns, 4 x 4 zmm accumulators)",
    "avx2": "AVX2 + FMA register tiles (panels of 24 columns, 4 x 3 ymm accumulators)",
    "mkl": "MKL packed GEMM (cblas_sgemm_compute)",
}
"""The float32 product paths of the kernels; the two tiled ones give the same bits."""
_PRODUCT_PATH_CODES = {1: "avx512", 2: "avx2", 0: "mkl"}
_KERNEL_ISA_ENV = "BIOSIM_KERNEL_ISA"
_KERNEL_ISA_FLAGS = {"native": (), "avx2": ("-mno-avx512f",)}
"""``BIOSIM_KERNEL_ISA``: ``native`` (default) or ``avx2``, which builds without AVX-512 (to test the
AVX2 path on an AVX-512 machine)."""


@dataclass
class PhaseTimes:
    """Seconds the CPU kernels spent per phase while :func:`record_phase_times` was recording.

    ``forward`` and ``backward`` are wall-clock seconds of the forward time
    loop and of the kernels' backward pass; ``recompute`` and ``adjoint`` are
    thread-seconds (summed over the backward's threads) of its two parts, the
    recomputation of each chunk's states and coefficients and the adjoint
    recursion through it (with the products). ``batches`` counts backward passes.
    """

    forward: float = 0.0
    backward: float = 0.0
    recompute: float = 0.0
    adjoint: float = 0.0
    batches: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, phase: str, seconds: float) -> None:
        with self._lock:
            setattr(self, phase, getattr(self, phase) + seconds)

    def as_dict(self) -> dict[str, float]:
        return {name: getattr(self, name) for name in ("forward", "backward", "recompute", "adjoint", "batches")}


_recording: PhaseTimes | None = None


@contextmanager
def record_phase_times() -> Iterator[PhaseTimes]:
    """Within the block, the fused engine's CPU kernels add their phase times to the yielded record."""
    global _recording
    previous, _recording = _recording, PhaseTimes()
    try:
        yield _recording
    finally:
        _recording = previous


def phase_recorder() -> PhaseTimes | None:
    """The record :func:`record_phase_times` is filling, or None (the kernels then time nothing)."""
    return _recording


def _best_seconds(
    run: Callable[[int], float], count: int, seconds: float, rounds: int, limit: int
) -> tuple[int, float]:
    """``(count, seconds)``: doubles ``count`` until ``run(count)`` (which returns its own duration) takes
    ``seconds`` or ``count`` reaches ``limit``, then the fastest of ``rounds`` runs at that count."""
    while True:
        elapsed = run(count)
        if elapsed >= seconds or count >= limit:
            break
        count *= 2
    for _ in range(rounds - 1):
        elapsed = min(elapsed, run(count))
    return count, elapsed


def fma_peak_flops(threads: int, seconds: float = 0.1, rounds: int = 5) -> float | None:
    """Measured float32 FMA peak of this machine (flop/s) with ``threads`` threads; None without the kernels.

    Independent FMA chains at the kernels' vector width, timed over about
    ``seconds``, the best of ``rounds``: the ceiling of the benchmark's
    roofline (:mod:`benchmarks.throughput`). The best, because other load on the
    machine can only lower it, and a lowered ceiling would flatter the
    fraction measured against it.
    """
    library = kernel_library()
    if library is None:
        return None
    flops: dict[int, float] = {}  # what the timed call itself counted (over the threads that ran)

    def run(iterations: int) -> float:
        start = time.perf_counter()
        flops[iterations] = library.fma_peak(iterations, threads)
        return time.perf_counter() - start

    iterations, elapsed = _best_seconds(run, 1 << 16, seconds, rounds, 1 << 34)
    return flops[iterations] / elapsed


def product_flops(n_e: int, n_i: int, n_classes: int, rows: int, seconds: float = 0.1, rounds: int = 3) -> float | None:
    """Flop/s of the adjoint's two float32 products alone (4 n_e n_i per trial-step), one thread.

    The products the kernels' backward pass runs per step for a block of
    ``rows`` trials, on weights of the network's shapes, timed over about
    ``seconds``, the best of ``rounds`` (as for the peak it is compared
    with); against :func:`fma_peak_flops` of one thread it says how close
    the products themselves come to the machine's peak. None without the
    kernels.
    """
    library = kernel_library()
    if library is None:
        return None
    w_ie = torch.full((n_i, n_e), 1e-3, dtype=torch.float32)
    w_e_out = torch.full((n_e, n_i + n_classes), 1e-3, dtype=torch.float32)
    network = Network(batch=rows, n_e=n_e, n_i=n_i, n_classes=n_classes, n_threads=1, mxcsr=-1)
    network.w_ie, network.w_e_out = w_ie.data_ptr(), w_e_out.data_ptr()

    def run(repeats: int) -> float:
        return library.product_seconds(ctypes.byref(network), rows, repeats)

    repeats, elapsed = _best_seconds(run, 8, seconds, rounds, 1 << 24)
    return 4.0 * n_e * n_i * rows * repeats / elapsed


def kernel_info() -> dict[str, Any]:
    """Which CPU kernels this process uses: ``{"available", "product_path", "description", "library"}``."""
    library = kernel_library()
    if library is None:
        return {"available": False, "product_path": None, "description": "torch operations", "library": None}
    return {
        "available": True,
        "product_path": library.product_path,
        "description": PRODUCT_PATHS[library.product_path],
        "library": library.path,
    }


@functools.cache
def kernel_library() -> KernelLibrary | None:
    """Build (once per machine and source version) and load the CPU kernels; ``None`` if unavailable.

    Needs Linux, the system C++ compiler with OpenMP, and the MKL vector math
    (``vmsExp``/``vmdExp``) exported by ``libtorch_cpu``, which is what
    ``torch.exp`` calls on CPU. Set ``BIOSIM_FUSED_KERNELS=0`` to skip them.
    """
    if not switch("BIOSIM_FUSED_KERNELS") or not sys.platform.startswith("linux"):
        return None
    torch_cpu = _torch_library_directory() / "libtorch_cpu.so"
    compiler = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")

    def unavailable(reason: str) -> None:
        warnings.warn(f"fused engine: CPU kernels unavailable ({reason}); using torch operations", stacklevel=3)

    try:
        exports = ctypes.CDLL(str(torch_cpu))
    except OSError as error:
        return unavailable(f"cannot load {torch_cpu}: {error}")
    missing = [symbol for symbol in _MKL_SYMBOLS if not hasattr(exports, symbol)]
    if missing:
        return unavailable(f"this torch build exports no MKL {', '.join(missing)}")
    if compiler is None:
        return unavailable("no C++ compiler: set CXX or install g++")
    try:
        kernel_source = _KERNEL_SOURCE_PATH.read_text()
    except OSError as error:
        return unavailable(f"cannot read the kernel source {_KERNEL_SOURCE_PATH}: {error}")
    isa = os.environ.get(_KERNEL_ISA_ENV, "native")
    if isa not in _KERNEL_ISA_FLAGS:
        raise ValueError(f"{_KERNEL_ISA_ENV}={isa!r}: expected one of {', '.join(_KERNEL_ISA_FLAGS)}")
    flags = [*_COMPILER_FLAGS, "-march=native", *_KERNEL_ISA_FLAGS[isa]]
    link = [f"-L{torch_cpu.parent}", "-Wl,--no-as-needed", "-ltorch_cpu", f"-Wl,-rpath,{torch_cpu.parent}"]
    # -march=native: the cached library belongs to this kind of CPU as well.
    key = hashlib.sha256(
        "\n".join([kernel_source, compiler, *flags, *link, torch.__version__, _cpu_description()]).encode()
    ).hexdigest()
    cache = Path(os.environ.get("BIOSIM_KERNEL_CACHE") or Path.home() / ".cache" / "biosim" / "kernels")
    target = cache / f"fused_engine_{key[:20]}.so"
    try:
        if not target.exists():
            cache.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=cache) as build:
                source = Path(build) / "fused_engine.cpp"
                source.write_text(kernel_source)
                output = Path(build) / target.name
                subprocess.run(
                    [compiler, *flags, str(source), "-o", str(output), *link],
                    check=True,
                    capture_output=True,
                    text=True,
                )
                os.replace(output, target)  # atomic: concurrent builds cannot leave a partial file
        library = ctypes.CDLL(str(target))
    except (OSError, subprocess.CalledProcessError) as error:
        detail = (getattr(error, "stderr", "") or str(error)).strip().splitlines()
        return unavailable(f"the build failed: {' | '.join(detail[:5])}")
    mismatches = layout_mismatches(library)
    if mismatches:  # a struct changed on one side only: calling the kernels would corrupt memory
        raise RuntimeError(
            f"{_KERNEL_SOURCE_PATH.name} and its ctypes classes disagree on struct layouts: " + "; ".join(mismatches)
        )

    def bind(name: str, *argtypes: Any) -> dict[torch.dtype, Any]:
        functions = {}
        for dtype, suffix in ((torch.float32, "f32"), (torch.float64, "f64")):
            function = getattr(library, f"biosim_{name}_{suffix}")
            function.argtypes, function.restype = list(argtypes), None
            functions[dtype] = function
        return functions

    pointer = ctypes.POINTER
    return KernelLibrary(
        forward=bind("forward", pointer(Network), pointer(ForwardBuffers)),
        recompute=bind("recompute", pointer(Network), pointer(ChunkBuffers), ctypes.c_int64, ctypes.c_int64),
        adjoint_steps=bind(
            "adjoint_steps",
            pointer(Network),
            pointer(AdjointBuffers),
            pointer(ChunkExtras),
            *(ctypes.c_int64,) * 4,
        ),
        surrogate=bind("surrogate", pointer(Network), ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p),
        packed_sizes=_function(library.biosim_packed_sizes, pointer(Network), ctypes.c_int64, ctypes.c_void_p),
        control_word=_function(library.biosim_control_word, restype=ctypes.c_int64),
        pack_weights=_function(
            library.biosim_pack_weights, pointer(Network), ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p
        ),
        path=str(target),
        fma_peak=_function(library.biosim_fma_peak, ctypes.c_int64, ctypes.c_int64, restype=ctypes.c_double),
        product_path=_PRODUCT_PATH_CODES[_function(library.biosim_product_path, restype=ctypes.c_int64)()],
        product_seconds=_function(
            library.biosim_product_seconds, pointer(Network), ctypes.c_int64, ctypes.c_int64, restype=ctypes.c_double
        ),
    )


def _function(function: Any, *argtypes: Any, restype: Any = None) -> Any:
    function.argtypes, function.restype = list(argtypes), restype
    return function


def kernels_available() -> bool:
    """Whether the compiled CPU kernels can be used here (building them on first call)."""
    return kernel_library() is not None


def population_struct(k: PopulationConstants) -> ctypes.Structure:
    """The kernels' ``Population`` of one population's constants (the fields share their names)."""
    return make_struct(Population, **{name: getattr(k, name) for name in _field_names(Population)})
