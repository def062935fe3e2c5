#!/usr/bin/env bash
# The prepared GPU check: on a machine with an NVIDIA GPU, install
# what is missing and, in at most --budget-s seconds (default 480), measure
#   (a) medium-tier training epochs on CUDA torch (1600 digits, batch 256),
#   (b) biosim bench --device cuda --json (the training comparison on the GPU),
#   (c) 400 test digits on brian2cuda cuda_standalone and on cpp_standalone,
#       each spike-compared with the float64 mirror, and their speed ratio;
# then write ONE JSON file with all figures (--out). Every step runs in its
# own process under its own timeout, so a failure loses only that step.
# Without a GPU it writes {"gpu": false, "reason": ...} and exits with 2.
# Under the device tool, the JSON file goes to $OUT (the folder whose files come back), the step files
# and logs too, and the merged file is rewritten after every step, so a call stopped at its time limit
# still returns what it measured; builds and spike files stay in the work folder.
#
#   bash scripts/gpu_check.sh [--out FILE] [--budget-s S] [--steps LIST] [--no-install]
#                             [--wheelhouse DIR] [--python PY] [--epochs N] [--n-trials N] [--bench-brian2]
#   bash scripts/gpu_check.sh --download-wheels [DIR]   # on a machine with PyPI: wheels for an offline GPU machine
#
# Exit status: 0 all steps ok, 1 a step failed, timed out or was skipped, 2 no GPU, 3 bad arguments.
set -uo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# HOME may be unset on a bare machine (and set -u would stop at its first use): the user's home, or /tmp.
HOME="${HOME:-$(getent passwd "$(id -u)" 2>/dev/null | cut -d: -f6)}"
export HOME="${HOME:-/tmp}"
if [ -n "${OUT:-}" ] && [ -d "${OUT:-}" ]; then
    out="$OUT/gpu_check.json"
else
    out="$root/results/gpu_check/gpu_check.json"
fi
budget=480
install=1
wheelhouse="${BIOSIM_GPU_WHEELHOUSE:-$root/.whl}"
python="${BIOSIM_GPU_PYTHON:-}"
venv="${BIOSIM_GPU_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/biosim/venv-gpu}"
install_timeout="${BIOSIM_GPU_INSTALL_TIMEOUT:-300}"
epochs=2
n_trials=400
bench_brian2=0
steps="train,bench,cpp,cuda,compare"
download=""

usage() { awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "${BASH_SOURCE[0]}"; }  # the header
die_usage() { echo "gpu_check: $1 (see --help)" >&2; exit 3; }
need_value() { [ $# -ge 2 ] && [ -n "$2" ] || die_usage "$1 needs a value"; }
while [ $# -gt 0 ]; do
    case "$1" in
        --out) need_value "$@"; out="$2"; shift 2 ;;
        --budget-s) need_value "$@"; budget="$2"; shift 2 ;;
        --steps) need_value "$@"; steps="$2"; shift 2 ;;
        --no-install) install=0; shift ;;
        --wheelhouse) need_value "$@"; wheelhouse="$2"; shift 2 ;;
        --python) need_value "$@"; python="$2"; shift 2 ;;
        --epochs) need_value "$@"; epochs="$2"; shift 2 ;;
        --n-trials) need_value "$@"; n_trials="$2"; shift 2 ;;
        --bench-brian2) bench_brian2=1; shift ;;
        --download-wheels)
            download="$root/.whl"
            if [ $# -ge 2 ] && [ "${2#--}" = "$2" ]; then download="$2"; shift; fi
            shift ;;
        -h|--help) usage; exit 0 ;;
        *) die_usage "unknown argument $1" ;;
    esac
done
for number in "$budget" "$epochs" "$n_trials"; do
    [[ "$number" =~ ^[1-9][0-9]*$ ]] || die_usage "expected a positive integer, got '$number'"
done
for step in ${steps//,/ }; do
    case "$step" in train|bench|cpp|cuda|compare) ;; *) die_usage "unknown step '$step' in --steps (train,bench,cpp,cuda,compare)" ;; esac
done
case "$out" in /*) ;; *) out="$PWD/$out" ;; esac

# Versions the GPU machine gets: README 'GPU install' (Python 3.12) or the CPU pins (Python 3.11).
pins_for() {  # $1 = python version X.Y
    case "$1" in
        3.11) echo "Brian2==2.8.0 Brian2Cuda==1.0a7 mlxtend==0.25.0" ;;
        *) echo "brian2==2.10.1 brian2cuda==1.0b1 mlxtend==0.25.0" ;;
    esac
}

if [ -n "$download" ]; then
    # Wheels the GPU image lacks (its python3 is 3.12 and already holds CUDA torch, numpy, scipy, sympy,
    # jinja2, cython, pandas, scikit-learn, nvidia-curand ...), for a machine that cannot reach PyPI.
    mkdir -p "$download"
    pip_python="${python:-$(command -v python3)}"
    # shellcheck disable=SC2046
    "$pip_python" -m pip download --disable-pip-version-check --no-deps --only-binary=:all: \
        --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64 \
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d "$download" $(pins_for 3.12)
    status=$?
    echo "gpu_check: wheels in $download; on the GPU machine: bash scripts/gpu_check.sh --wheelhouse $download" >&2
    exit $status
fi

json_string() {  # a JSON string literal of $1 (printable ASCII kept, the rest dropped)
    local text
    text="$(printf '%s' "$1" | LC_ALL=C tr -cd '\11\12\40-\176' | sed -e 's/\\/\\\\/g' -e 's/"/\\"/g' -e 's/\t/\\t/g')"
    text="${text//$'\n'/\\n}"
    printf '"%s"' "$text"
}
now() { date -u +%Y-%m-%dT%H:%M:%SZ; }
commit="$(git -C "$root" rev-parse HEAD 2>/dev/null || echo unknown)"
started="$(now)"

# --- is there a GPU? ----------------------------------------------------------------
reason=""
if ! command -v nvidia-smi >/dev/null 2>&1; then
    reason="nvidia-smi not found on PATH: no NVIDIA driver, so no GPU to check"
else
    listing="$(timeout 60 nvidia-smi -L 2>&1)"
    code=$?
    if ! grep -q '^GPU ' <<<"$listing"; then
        first="$(head -n 1 <<<"$listing")"
        reason="nvidia-smi -L lists no GPU (exit status $code: ${first:-no output})"
    fi
fi
if [ -n "$reason" ]; then
    mkdir -p "$(dirname "$out")" || exit 2
    printf '{\n  "gpu": false,\n  "reason": %s,\n  "script": "scripts/gpu_check.sh",\n  "exit_status": 2,\n  "git_commit": %s,\n  "host": %s,\n  "time": %s\n}\n' \
        "$(json_string "$reason")" "$(json_string "$commit")" "$(json_string "$(uname -n)")" \
        "$(json_string "$started")" > "$out"
    {
        echo "gpu_check: no NVIDIA GPU here: $reason."
        echo "gpu_check: nothing was installed or measured; wrote $out"
        echo "gpu_check: run this script on a machine with an NVIDIA GPU (CPU figures: biosim bench)."
    } >&2
    exit 2
fi

work="${BIOSIM_GPU_WORK:-$root/results/gpu_check/gpu_check_work}"  # builds and spikes: large, kept here
parts="$(dirname "$out")/gpu_check_parts"  # small step files and logs, next to the merged file
rm -rf "$work" "$parts"
mkdir -p "$work" "$parts" || { echo "gpu_check: cannot create $work and $parts" >&2; exit 3; }
install_log="$parts/install.log"
: > "$install_log"
say() { echo "[gpu_check $(printf '%4d' "$SECONDS") s] $*" >&2; }
say "GPU: $(grep '^GPU ' <<<"$listing" | head -n 1)"

# --- install what is missing ----------------------------------------------------------
# A CUDA torch never goes into .venv (pinned CPU torch). Either an interpreter here already has CUDA
# torch (GPU images do): the missing packages go into a separate --target directory on PYTHONPATH; or a
# venv of its own ($venv) gets a CUDA torch wheel and the packages.
declare -A installed=()
notes=()
cannot=()
install_deadline=$((SECONDS + install_timeout))
has_cuda_torch() { timeout 120 "$1" -c 'import sys, torch; sys.exit(0 if torch.version.cuda else 1)' >/dev/null 2>&1; }
pyversion() { "$1" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null; }
mode=""
site=""
if [ -n "$python" ]; then
    mode="given interpreter"
else
    for candidate in python3 python3.12 python3.11; do
        path="$(command -v "$candidate" 2>/dev/null)" || continue
        if has_cuda_torch "$path"; then python="$path"; mode="interpreter with CUDA torch"; break; fi
    done
fi
if [ -z "$python" ]; then
    mode="venv $venv"
    if [ ! -x "$venv/bin/python" ] && [ "$install" = 1 ]; then
        base="$(command -v python3.12 || command -v python3.11 || command -v python3)"
        say "creating $venv from $base"
        "$base" -m venv "$venv" >>"$install_log" 2>&1 || cannot+=("venv $venv (python -m venv failed)")
    fi
    python="$venv/bin/python"
fi
if [ ! -x "$python" ] && ! command -v "$python" >/dev/null 2>&1; then
    echo "gpu_check: no usable Python interpreter ($python); see $install_log" >&2
    python="$(command -v python3)"
fi
version="$(pyversion "$python")"
if [ "$mode" != "venv $venv" ]; then
    site="${BIOSIM_GPU_SITE:-${XDG_CACHE_HOME:-$HOME/.cache}/biosim/gpu-site/py$version}"
    [ "$install" = 1 ] && mkdir -p "$site"
fi
export PYTHONPATH="$root${site:+:$site}${PYTHONPATH:+:$PYTHONPATH}"  # a caller's own folders stay on the path
export PYTHONUNBUFFERED=1 MPLBACKEND=Agg
say "Python $version: $python ($mode)${site:+; extra packages in $site}"

pip_install() {  # pip_install WHAT REQUIREMENT...: wheelhouse first (offline), then the index; records the outcome
    local what="$1"; shift
    local left=$((install_deadline - SECONDS)) target=()
    # --target ignores what is installed, so it takes no dependencies: the loop below adds the missing ones.
    [ -n "$site" ] && target=(--target "$site" --upgrade --no-deps)
    if [ "$left" -lt 10 ]; then cannot+=("$what (install time of ${install_timeout} s used up)"); return 1; fi
    local common=(--disable-pip-version-check --no-input --no-warn-script-location "${target[@]}")
    if compgen -G "$wheelhouse/*.whl" >/dev/null; then
        echo "+ pip install --no-index --find-links $wheelhouse $*" >>"$install_log"
        if timeout "$left" "$python" -m pip install "${common[@]}" --no-deps --no-index --find-links "$wheelhouse" "$@" \
            >>"$install_log" 2>&1; then
            installed[$what]="installed from $wheelhouse: $*"; return 0
        fi
    fi
    left=$((install_deadline - SECONDS))
    [ "$left" -ge 10 ] || { cannot+=("$what (install time used up)"); return 1; }
    echo "+ pip install $* (package index)" >>"$install_log"
    if timeout "$left" "$python" -m pip install "${common[@]}" --timeout 15 --retries 1 "$@" >>"$install_log" 2>&1; then
        installed[$what]="installed from the package index: $*"; return 0
    fi
    cannot+=("$what ($* : not in $wheelhouse and the package index failed or cannot be reached; see $install_log)")
    return 1
}
importable() { timeout 120 "$python" -c "import $1" >/dev/null 2>&1; }

if [ "$install" = 1 ]; then
    if has_cuda_torch "$python"; then
        installed[torch]="present: $("$python" -c 'import torch; print(torch.__version__)' 2>/dev/null)"
    else
        # A CUDA build matching the driver (nvidia-smi's 'CUDA Version'); BIOSIM_TORCH_INDEX_URL overrides.
        cuda="$(nvidia-smi 2>/dev/null | sed -n 's/.*CUDA Version: \([0-9]*\)\.\([0-9]*\).*/\1\2/p' | head -n 1)"
        tag=cu126
        [ "${cuda:-0}" -ge 128 ] && tag=cu128
        [ "${cuda:-0}" -ge 130 ] && tag=cu130
        say "installing a CUDA torch ($tag) into $python's environment"
        pip_install torch torch --index-url "${BIOSIM_TORCH_INDEX_URL:-https://download.pytorch.org/whl/$tag}" || true
    fi
    # shellcheck disable=SC2207
    pins=($(pins_for "$version"))
    for spec in "${pins[@]}"; do
        name="${spec%%==*}"; module="$(tr '[:upper:]' '[:lower:]' <<<"$name")"
        if importable "$module"; then
            installed[$module]="present: $("$python" -c "import $module; print($module.__version__)" 2>/dev/null)"
        else
            say "installing $spec"
            pip_install "$module" "$spec" || true
        fi
    done
    # What brian2, biosim and the mirror import, where the interpreter lacks it (not pinned: any version).
    for module in numpy scipy sympy pyparsing jinja2 cython matplotlib tqdm pandas sklearn; do
        importable "$module" && continue
        package="$module"; [ "$module" = sklearn ] && package=scikit-learn
        say "installing $package"
        pip_install "$package" "$package" || true
    done
    # cuRAND, only where neither the CUDA toolkit nor an installed wheel provides it (biosim/cuda_toolchain.py).
    if importable brian2cuda; then
        toolchain="$(timeout 120 "$python" -m biosim.cuda_toolchain --info 2>&1)"
        echo "$toolchain" >>"$install_log"
        if grep -q 'cuRAND not found' <<<"$toolchain"; then
            say "installing cuRAND (requirements/cuda-compile.txt)"
            pip_install nvidia-curand -r "$root/requirements/cuda-compile.txt" || true
        fi
    fi
else
    notes+=("--no-install: nothing was installed")
fi
for item in "${cannot[@]}"; do say "COULD NOT INSTALL: $item"; done

{
    printf '{\n  "mode": %s,\n  "python": %s,\n  "python_version": %s,\n  "extra_site": %s,\n  "wheelhouse": %s,\n  "log": %s,\n  "packages": {' \
        "$(json_string "$mode")" "$(json_string "$python")" "$(json_string "$version")" "$(json_string "$site")" \
        "$(json_string "$wheelhouse")" "$(json_string "$install_log")"
    separator=""
    for key in "${!installed[@]}"; do
        printf '%s\n    %s: %s' "$separator" "$(json_string "$key")" "$(json_string "${installed[$key]}")"; separator=","
    done
    printf '\n  },\n  "could_not_install": ['
    separator=""
    for item in "${cannot[@]}" ; do printf '%s\n    %s' "$separator" "$(json_string "$item")"; separator=","; done
    printf '\n  ],\n  "notes": ['
    separator=""
    for item in "${notes[@]}" ; do printf '%s\n    %s' "$separator" "$(json_string "$item")"; separator=","; done
    printf '\n  ],\n  "seconds": %d\n}\n' "$SECONDS"
} > "$parts/install.json"

timeout 180 "$python" -m benchmarks.gpu_check env --out "$parts/env.json" >>"$install_log" 2>&1 \
    || say "the environment report failed (see $install_log)"
torch_sees_gpu="$(timeout 120 "$python" -c 'import torch; print(int(torch.cuda.is_available()))' 2>/dev/null)"

# Brian2 and brian2cuda build with make and a C++ compiler, and brian2cuda with nvcc: say early what is missing.
tools=""
for tool in make g++ nvcc; do
    where="$(command -v "$tool" 2>/dev/null)" || { where=""; say "preflight: $tool not found on PATH"; }
    tools+="${tools:+, }$(json_string "$tool"): $(json_string "$where")"
done

merge_report() {  # merge_report STATE: the one JSON file from the step files so far (STATE: partial or complete)
    local meta="{\"script\": \"scripts/gpu_check.sh\", \"state\": \"$1\", \"git_commit\": $(json_string "$commit"),"
    meta+=" \"started\": $(json_string "$started"), \"finished\": $(json_string "$(now)"), \"wall_s\": $SECONDS,"
    meta+=" \"measure_s\": $((SECONDS - measure_start)), \"budget_s\": $budget, \"tools\": {$tools},"
    meta+=" \"nvidia_smi\": $(json_string "$(timeout 60 nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1)"),"
    meta+=" \"host\": $(json_string "$(uname -n)"), \"work_dir\": $(json_string "$work")}"
    local merger="$python"
    "$merger" -c 'import json' 2>/dev/null || merger=python3
    "$merger" -m benchmarks.gpu_check merge --parts "$parts" --out "$out" --meta "$meta"
}

# --- the measurements -----------------------------------------------------------------------------
# Each step has a share of the budget; what a step leaves unused goes to the next, and no step eats into
# the shares of the steps after it. The shares: (a) 100 s, (b) 110 s, (c) cpp 70 s, cuda 150 s, compare 50 s.
declare -A share=([train]=100 [bench]=110 [cpp]=70 [cuda]=150 [compare]=50)
total_share=0
for step in train bench cpp cuda compare; do total_share=$((total_share + share[$step])); done
measure_start=$SECONDS
allotted=0

write_step() {  # write_step NAME STATUS RC TIMEOUT SECONDS WHY [EXTRA_JSON_FIELDS]
    printf '{"status": %s, "exit_status": %s, "timeout_s": %s, "seconds": %s, "why": %s, "log": %s%s}\n' \
        "$(json_string "$2")" "${3:-null}" "${4:-null}" "${5:-null}" "$(json_string "$6")" \
        "$(json_string "$parts/$1.log")" "${7:-}" > "$parts/$1.step.json"
}

run_step() {  # run_step KEY NAME EXTRA_JSON -- COMMAND...
    local key="$1" name="$2" extra="$3"; shift 4
    # This step's share of the budget, scaled to --budget-s, plus what earlier steps left.
    allotted=$((allotted + share[$key] * budget / total_share))
    local limit=$((measure_start + allotted - SECONDS))
    if [[ ",$steps," != *",$key,"* ]]; then
        write_step "$name" skipped "" "" "" "not in --steps" "$extra"; return
    fi
    if [ "$limit" -lt 15 ]; then
        write_step "$name" skipped "" "" "" "no time left of the ${budget} s budget" "$extra"
        say "$name: skipped (no time left)"; return
    fi
    say "$name: up to $limit s: $*"
    local begin=$SECONDS rc
    timeout --kill-after=15 "$limit" "$@" >"$parts/$name.log" 2>&1
    rc=$?
    local status=ok why=""
    if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then status=timeout; why="stopped after $limit s"
    elif [ "$rc" != 0 ]; then status=failed; why="exit status $rc (log_tail)"; fi
    write_step "$name" "$status" "$rc" "$limit" "$((SECONDS - begin))" "$why" "$extra"
    say "$name: $status in $((SECONDS - begin)) s"
    merge_report partial >/dev/null 2>&1 || true  # what is measured so far comes back even if the call is stopped
}

no_torch_gpu() {
    write_step "$1" skipped "" "" "" "torch in $python cannot use the GPU (see install.json and env.json)" "$2"
    say "$1: skipped (torch cannot use the GPU)"
    allotted=$((allotted + share[$3] * budget / total_share))
}

# (a) medium-tier epochs on CUDA torch
train_metrics=", \"metrics_jsonl\": $(json_string "$work/train/train_medium_cuda/metrics.jsonl")"
if [ "$torch_sees_gpu" = 1 ]; then
    run_step train train_epoch "$train_metrics" -- \
        "$python" -m benchmarks.gpu_check train --work "$work/train" --epochs "$epochs" --out "$parts/train_epoch.json"
else
    no_torch_gpu train_epoch "$train_metrics" train
fi

# (b) biosim bench --device cuda --json; Brian2 is step (c), so the bench skips it unless --bench-brian2
bench_flags=(--no-brian2)
[ "$bench_brian2" = 1 ] && bench_flags=(--n-brian2-trials "$n_trials")
bench_extra=", \"command\": $(json_string "biosim bench --device cuda --json ${bench_flags[*]} --out $work/bench")"
if [ "$torch_sees_gpu" = 1 ]; then
    run_step bench bench "$bench_extra" -- \
        "$python" -m protocols.cli bench --device cuda --json "${bench_flags[@]}" --out "$work/bench"
    [ -f "$work/bench/bench.json" ] && cp "$work/bench/bench.json" "$parts/bench.json"
else
    no_torch_gpu bench "$bench_extra" bench
fi

# (c) Brian2: cpp_standalone, cuda_standalone, then both against the float64 mirror
for backend in cpp_standalone cuda_standalone; do
    key="${backend%%_*}"
    # A fresh project directory (build included, nothing reused); cpp_standalone as one program (the baseline).
    run_step "$key" "brian2_$backend" "" -- "$python" -m benchmarks.gpu_check brian2 --backend "$backend" --processes 1 \
        --n-trials "$n_trials" --build-dir "$work/build/$backend" --spikes "$work/spikes/spikes_$backend.npz" \
        --out "$parts/brian2_$backend.json"
done
if compgen -G "$work/spikes/spikes_*.npz" >/dev/null; then
    run_step compare crosscheck "" -- "$python" -m benchmarks.gpu_check compare --n-trials "$n_trials" \
        --spikes-dir "$work/spikes" --out "$parts/crosscheck.json"
else
    write_step crosscheck skipped "" "" "" "no Brian2 backend produced spikes" ""
fi

# --- the one JSON file -------------------------------------------------------------------------------
if ! merge_report complete; then
    echo "gpu_check: merging the step files failed; they are in $parts" >&2
    exit 1
fi
echo "gpu_check: wrote $out" >&2
failed="$(grep -L '"status": "ok"' "$parts"/*.step.json 2>/dev/null)"
[ -z "$failed" ] || { echo "gpu_check: steps not ok: $(basename -a $failed | sed 's/.step.json//' | tr '\n' ' ')" >&2; exit 1; }
exit 0
