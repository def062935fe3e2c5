#!/usr/bin/env bash
# The prepared GPU check: the one command a lent GPU machine runs (docs/gpu.md, "The device command").
# On a machine with an NVIDIA GPU it installs what is missing (offline, from the carried wheels in .whl/),
# then, within --total-s seconds (default 540, install included), measures in this order:
#   protocol_probe     one short epoch (3 Adam steps) of the 12 runs of dale_pruning (medium tier, reference
#                      preset, CUDA, trained together), timed: the epochs that fit (protocols/epoch_budget.py);
#   protocol           biosim protocol run dale_pruning --tier medium --preset reference --device cuda --epochs N,
#                      its runs validated in Brian2 cpp_standalone over all cores (BIOSIM_BRIAN2_PROCESSES);
#   protocol_validate  the same command again: finishes what the time limit cut (validation, table, report);
#   cuda               400 test digits on brian2cuda cuda_standalone as copies of the network (one build);
#   cpp16, cpp1        the same digits on cpp_standalone, back to back, split over all cores and in one process;
#   compare            each against the float64 mirror (the spike-identity report), speed ratios in the summary;
#   bench, bench_fused biosim bench --device cuda, then with BIOSIM_CUDA_TRITON=on BIOSIM_CUDA_GRAPHS=on (only
#                      where biosim knows those two switches; skipped with the reason otherwise);
#   train              (not run unless named in --steps) one medium-tier run alone, 2 epochs.
# Each step runs in its own process under its own timeout (its share of the budget plus what earlier steps
# left), so a failure loses only that step. The one JSON file (--out; $OUT/gpu_check.json under the device
# tool) is rewritten after every step, and every 20 s while the protocol trains; beside it come back
# gpu_check_logs.tar.gz (step files and logs) and the protocol's table and report. Without a GPU it writes
# {"gpu": false, "reason": ...} and exits with 2. --rehearse runs every step here on the CPU at tiny sizes
# (smoke tier, 4 trials, cpp_standalone in place of cuda_standalone), installing nothing.
#
# Budget (seconds), estimated before any GPU ran this (none has been lent yet); each from what is known:
#   install + preflight   45  3 wheels --no-deps into a --target folder, ~12 interpreter starts (torch, brian2)
#   protocol_probe        75  start + models (15), epoch 0 of 12 runs on 768 + 256 digits each (~1 s a batch of
#                             256 if a time step's ~60 launches take ~8 us each), 3 Adam steps, 12 x 256 digits
#   protocol             145  start (30), epoch 0 on 2000 digits x 12 runs, N epochs (7 Adam steps + 400 digits)
#   protocol_validate     75  12 validations, each ~10 s: an incremental cpp_standalone build, 400 trials over
#                             16 processes, the float64 and float32 mirrors on 16 threads; table and figures
#   cuda                 100  nvcc build (326 s on 2 cores for the copies layout, about 16x less over 16 cores),
#                             400 copies: host-side synapse creation (~25 s on the CPU), 2000 steps, results
#   cpp16                 20  a fresh build (~12 s), 400 trials over 16 processes
#   cpp1                  15  cpp16's build again (nothing recompiled), 400 trials at ~76 trials/s (bench here)
#   compare               20  the float64 mirror on 400 trials (16 threads), three identity reports
#   bench, bench_fused  20+15 biosim bench --device cuda --no-brian2 --no-batch-sweep, twice
#   merge, logs           10  (reserved outside the shares)
#   total                540  = the device command's limit; the device tool's timeout_s=560 leaves 20 s over
# The shares are scaled to what the install leaves of --total-s; a step's unused time goes to the next.
#
#   bash scripts/gpu_check.sh [--out FILE] [--total-s S] [--budget-s S] [--steps LIST] [--no-install]
#                             [--wheelhouse DIR] [--python PY] [--epochs N] [--protocol-epochs N]
#                             [--n-trials N] [--max-copies N] [--bench-brian2] [--rehearse]
#   bash scripts/gpu_check.sh --download-wheels [DIR]   # on a machine with PyPI: wheels for an offline GPU machine
#
# --steps: a comma list of protocol,validate,cuda,cpp16,cpp1,compare,bench,bench_fused,train (default all but
# train); --protocol-epochs N skips the probe; --epochs N is the train step's; --budget-s S sets the
# measurements' seconds directly (default: --total-s less the install).
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
total=540
budget=""
install=1
wheelhouse="${BIOSIM_GPU_WHEELHOUSE:-$root/.whl}"
python="${BIOSIM_GPU_PYTHON:-}"
venv="${BIOSIM_GPU_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/biosim/venv-gpu}"
install_timeout="${BIOSIM_GPU_INSTALL_TIMEOUT:-300}"
epochs=2
protocol_epochs=""
n_trials=400
max_copies=400
bench_brian2=0
rehearse=0
all_steps="protocol,validate,cuda,cpp16,cpp1,compare,bench,bench_fused,train"
steps="protocol,validate,cuda,cpp16,cpp1,compare,bench,bench_fused"
download=""

usage() { awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "${BASH_SOURCE[0]}"; }  # the header
die_usage() { echo "gpu_check: $1 (see --help)" >&2; exit 3; }
need_value() { [ $# -ge 2 ] && [ -n "$2" ] || die_usage "$1 needs a value"; }
while [ $# -gt 0 ]; do
    case "$1" in
        --out) need_value "$@"; out="$2"; shift 2 ;;
        --total-s) need_value "$@"; total="$2"; shift 2 ;;
        --budget-s) need_value "$@"; budget="$2"; shift 2 ;;
        --steps) need_value "$@"; steps="$2"; shift 2 ;;
        --no-install) install=0; shift ;;
        --wheelhouse) need_value "$@"; wheelhouse="$2"; shift 2 ;;
        --python) need_value "$@"; python="$2"; shift 2 ;;
        --epochs) need_value "$@"; epochs="$2"; shift 2 ;;
        --protocol-epochs) need_value "$@"; protocol_epochs="$2"; shift 2 ;;
        --n-trials) need_value "$@"; n_trials="$2"; shift 2 ;;
        --max-copies) need_value "$@"; max_copies="$2"; shift 2 ;;
        --bench-brian2) bench_brian2=1; shift ;;
        --rehearse) rehearse=1; shift ;;
        --download-wheels)
            download="$root/.whl"
            if [ $# -ge 2 ] && [ "${2#--}" = "$2" ]; then download="$2"; shift; fi
            shift ;;
        -h|--help) usage; exit 0 ;;
        *) die_usage "unknown argument $1" ;;
    esac
done
for number in "$total" ${budget:+"$budget"} "$epochs" ${protocol_epochs:+"$protocol_epochs"} "$n_trials" "$max_copies"; do
    [[ "$number" =~ ^[1-9][0-9]*$ ]] || die_usage "expected a positive integer, got '$number'"
done
for step in ${steps//,/ }; do
    [[ ",$all_steps," == *",$step,"* ]] || die_usage "unknown step '$step' in --steps ($all_steps)"
done
if [ "$rehearse" = 1 ]; then
    # Every step on this CPU at tiny sizes: the script's paths, not its figures. Nothing is installed.
    install=0
    n_trials=4
    max_copies=4
    [ -n "$budget" ] || budget=900  # a ceiling: on a free 2-core CPU the steps end in about 4 minutes
    [ -n "$python" ] || python="$(command -v python3)"
fi
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
listing="GPU none: a rehearsal on the CPU (--rehearse)"
if [ "$rehearse" = 1 ]; then
    :
elif ! command -v nvidia-smi >/dev/null 2>&1; then
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

work="${BIOSIM_GPU_WORK:-$root/results/gpu_check/gpu_check_work}"  # builds, runs and spikes: large, kept here
# The step files and logs stay in the work folder too: the device tool returns at most 8 files from $OUT, so
# beside the merged file go one archive of them (gpu_check_logs.tar.gz) and the protocol's table and report.
parts="$work/parts"
out_dir="$(dirname "$out")"
rm -rf "$work"
mkdir -p "$work" "$parts" "$out_dir" || { echo "gpu_check: cannot create $work and $out_dir" >&2; exit 3; }
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
    local meta="{\"script\": \"scripts/gpu_check.sh\", \"state\": \"$1\", \"rehearsal\": $([ "$rehearse" = 1 ] && echo true || echo false),"
    meta+=" \"git_commit\": $(json_string "$commit"), \"started\": $(json_string "$started"), \"finished\": $(json_string "$(now)"),"
    meta+=" \"wall_s\": $SECONDS, \"measure_s\": $((SECONDS - measure_start)), \"total_s\": $total, \"budget_s\": $budget,"
    meta+=" \"shares_s\": {$shares_json}, \"tools\": {$tools}, \"brian2_processes\": $cores,"
    meta+=" \"nvidia_smi\": $(json_string "$(timeout 60 nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1)"),"
    meta+=" \"host\": $(json_string "$(uname -n)"), \"work_dir\": $(json_string "$work")}"
    local merger="$python"
    "$merger" -c 'import json' 2>/dev/null || merger=python3
    "$merger" -m benchmarks.gpu_check merge --parts "$parts" --out "$out" --meta "$meta" --protocol-dir "$protocol_dir"
    # What else comes back: the step files and logs in one archive, the protocol's table and report.
    tar -czf "$out_dir/.gpu_check_logs.tar.gz" -C "$work" parts 2>/dev/null \
        && mv -f "$out_dir/.gpu_check_logs.tar.gz" "$out_dir/gpu_check_logs.tar.gz"
    for name in table.md report.md; do
        [ -f "$protocol_dir/$name" ] && cp -f "$protocol_dir/$name" "$out_dir/protocol_$name"
    done
    return 0
}

# --- the measurements -----------------------------------------------------------------------------
cores="$(env -u OMP_NUM_THREADS nproc 2>/dev/null || echo 1)"  # nproc alone would obey OMP_NUM_THREADS
protocol_dir="$work/protocol"
# Estimated seconds of each step on the H200 (the header gives their basis); scaled to the budget below.
declare -A share=([protocol_probe]=75 [protocol]=145 [validate]=75 [cuda]=100 [cpp16]=20 [cpp1]=15 [compare]=20
                  [bench]=20 [bench_fused]=15 [train]=60)
order=(protocol_probe protocol validate cuda cpp16 cpp1 compare bench bench_fused train)
reserve=10  # the last merge and the archive
measure_start=$SECONDS
[ -n "$budget" ] || budget=$((total - SECONDS - reserve))
[ "$budget" -ge 60 ] || { say "only $budget s left of --total-s $total after the install"; budget=60; }
total_share=0
for key in "${order[@]}"; do
    [ "$key" = protocol_probe ] && k=protocol || k="$key"
    [[ ",$steps," == *",$k,"* ]] && total_share=$((total_share + share[$key]))
done
[ "$total_share" -gt 0 ] || total_share=1
shares_json=""
for key in "${order[@]}"; do
    [ "$key" = protocol_probe ] && k=protocol || k="$key"
    [[ ",$steps," == *",$k,"* ]] || continue
    shares_json+="${shares_json:+, }\"$key\": $((share[$key] * budget / total_share))"
done
allotted=0
say "measuring for $budget s (shares: $shares_json)"

write_step() {  # write_step NAME STATUS RC TIMEOUT SECONDS WHY [EXTRA_JSON_FIELDS]
    printf '{"status": %s, "exit_status": %s, "timeout_s": %s, "seconds": %s, "why": %s, "log": %s%s}\n' \
        "$(json_string "$2")" "${3:-null}" "${4:-null}" "${5:-null}" "$(json_string "$6")" \
        "$(json_string "$parts/$1.log")" "${7:-}" > "$parts/$1.step.json"
}

step_wanted() {  # step_wanted KEY: is the step (protocol_probe counts as protocol) in --steps?
    local key="$1"
    [ "$key" = protocol_probe ] && key=protocol
    [[ ",$steps," == *",$key,"* ]]
}

skip_step() {  # skip_step KEY NAME WHY [EXTRA]: recorded as skipped; its share goes to the next step
    step_wanted "$1" || return 0  # a step not asked for leaves no file: it is not a step that is not ok
    allotted=$((allotted + share[$1] * budget / total_share))
    write_step "$2" skipped "" "" "" "$3" "${4:-}"
    say "$2: skipped ($3)"
}

run_step() {  # run_step KEY NAME EXTRA_JSON -- COMMAND...
    local key="$1" name="$2" extra="$3"; shift 4
    step_wanted "$key" || return 0  # not asked for: no file, as for skip_step
    # This step's share of the budget, scaled to --budget-s, plus what earlier steps left.
    allotted=$((allotted + share[$key] * budget / total_share))
    local limit=$((measure_start + allotted - SECONDS))
    if [ "$limit" -lt 15 ]; then
        write_step "$name" skipped "" "" "" "no time left of the ${budget} s budget" "$extra"
        say "$name: skipped (no time left)"; return
    fi
    say "$name: up to $limit s: $*"
    local begin=$SECONDS rc watcher=""
    if [[ "$key" == protocol* || "$key" == validate ]]; then
        # The protocol's per-epoch metrics reach the JSON file every 20 s, not only when the step ends.
        write_step "$name" running "" "$limit" "" "" "$extra"
        ( while sleep 20; do merge_report partial >/dev/null 2>&1; done ) &
        watcher=$!
    fi
    timeout --kill-after=15 "$limit" "$@" >"$parts/$name.log" 2>&1
    rc=$?
    [ -n "$watcher" ] && { kill "$watcher" 2>/dev/null; wait "$watcher" 2>/dev/null; }
    local status=ok why=""
    if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then status=timeout; why="stopped after $limit s"
    elif [ "$rc" != 0 ]; then status=failed; why="exit status $rc (log_tail)"; fi
    write_step "$name" "$status" "$rc" "$limit" "$((SECONDS - begin))" "$why" "$extra"
    say "$name: $status in $((SECONDS - begin)) s"
    merge_report partial >/dev/null 2>&1 || true  # what is measured so far comes back even if the call is stopped
}

no_torch_gpu="torch in $python cannot use the GPU (see install.json and env.json)"
device=cuda
if [ "$rehearse" = 1 ]; then
    device=cpu
elif [ "$torch_sees_gpu" != 1 ]; then
    device=""
fi

# (a) the protocol: a timed probe picks the epochs, then biosim protocol run trains and validates the runs;
# the validate step runs the same command again, finishing what the time limit cut.
export BIOSIM_BRIAN2_PROCESSES="$cores"  # the runner's Brian2 validations, split over every core
protocol_args=(dale_pruning --tier medium --preset reference --device "$device")
probe_batches=3
if [ "$rehearse" = 1 ]; then
    # One run: the batched trainer on the full network is slow on a CPU (tests/test_epoch_budget.py stacks two).
    protocol_args=(dale_pruning --tier smoke --preset reference --device cpu --seeds 42 --conditions frozen_ping)
    probe_batches=2
fi
protocol_extra=", \"protocol_dir\": $(json_string "$protocol_dir")"
if [ -z "$device" ]; then
    skip_step protocol protocol_probe "$no_torch_gpu"
    skip_step protocol protocol "$no_torch_gpu"
    skip_step validate protocol_validate "$no_torch_gpu"
else
    if [ -n "$protocol_epochs" ]; then
        skip_step protocol protocol_probe "--protocol-epochs $protocol_epochs given"
    else
        run_step protocol_probe protocol_probe "" -- "$python" -m protocols.epoch_budget probe "${protocol_args[@]}" \
            --probe-batches "$probe_batches" --work "$work" --out "$parts/protocol_probe.json"
    fi
    chosen="$protocol_epochs"
    if [ -z "$chosen" ] && step_wanted protocol; then
        # The protocol step's limit, as run_step will compute it, less 10 % for what the estimate misses.
        left=$((measure_start + allotted + share[protocol] * budget / total_share - SECONDS))
        chosen="$(timeout 60 "$python" -m protocols.epoch_budget choose --probe "$parts/protocol_probe.json" \
            --budget-s $((left * 9 / 10)) 2>>"$parts/protocol_probe.log")" || chosen=""
        [[ "$chosen" =~ ^[1-9][0-9]*$ ]] || { say "the probe gave no epoch count; training 1 epoch"; chosen=1; }
    fi
    command=("$python" -m protocols.cli protocol run "${protocol_args[@]}" --batch-runs --epochs "${chosen:-1}"
             --out "$protocol_dir" --quiet)
    protocol_extra+=", \"epochs\": ${chosen:-null}, \"brian2_processes\": $cores, \"command\": $(json_string "${command[*]}")"
    run_step protocol protocol "$protocol_extra" -- "${command[@]}"
    run_step validate protocol_validate "$protocol_extra" -- "${command[@]}"
fi

# (d) Brian2: cuda_standalone as copies, cpp_standalone over all cores and in one process; then the mirror.
# Rehearsal: cpp_standalone in the copies layout stands in for cuda_standalone.
cuda_backend=cuda_standalone
[ "$rehearse" = 1 ] && cuda_backend=cpp_standalone
brian2_step() {  # brian2_step KEY NAME LABEL BACKEND BUILD_DIR ARGS...: the spikes go to spikes_LABEL.npz
    local key="$1" name="$2" label="$3" backend="$4" build="$5"; shift 5
    run_step "$key" "$name" ", \"label\": $(json_string "$label")" -- "$python" -m benchmarks.gpu_check brian2 \
        --backend "$backend" --n-trials "$n_trials" --build-dir "$build" --spikes "$work/spikes/spikes_$label.npz" \
        --out "$parts/$name.json" "$@"
}
# Fresh project directories: cuda's and cpp16's builds from scratch; cpp1 reuses cpp16's (nothing recompiled).
brian2_step cuda brian2_cuda_copies "${cuda_backend}_copies" "$cuda_backend" "$work/build/cuda_copies" \
    --layout copies --max-copies "$max_copies"
brian2_step cpp16 brian2_cpp_p16 "cpp_standalone_p$cores" cpp_standalone "$work/build/cpp" --processes "$cores"
brian2_step cpp1 brian2_cpp_p1 cpp_standalone_p1 cpp_standalone "$work/build/cpp" --processes 1
if compgen -G "$work/spikes/spikes_*.npz" >/dev/null; then
    run_step compare crosscheck "" -- "$python" -m benchmarks.gpu_check compare --n-trials "$n_trials" \
        --spikes-dir "$work/spikes" --out "$parts/crosscheck.json"
else
    skip_step compare crosscheck "no Brian2 step produced spikes"
fi

# (c) biosim bench on the device, as is and with the Triton step and CUDA graphs (where biosim knows them)
bench_flags=(--no-brian2 --no-batch-sweep)
[ "$bench_brian2" = 1 ] && bench_flags=(--n-brian2-trials "$n_trials" --no-batch-sweep)
[ "$rehearse" = 1 ] && bench_flags+=(--batch-size 2 --n-steps 100)
bench_device="${device:-cuda}"
bench_step() {  # bench_step KEY NAME ENV...
    local key="$1" name="$2"; shift 2
    local extra=", \"command\": $(json_string "$* biosim bench --device $bench_device --json ${bench_flags[*]}")"
    if [ -z "$device" ]; then skip_step "$key" "$name" "$no_torch_gpu" "$extra"; return; fi
    run_step "$key" "$name" "$extra" -- env "$@" "$python" -m protocols.cli bench --device "$bench_device" --json \
        "${bench_flags[@]}" --out "$work/$name"
    [ -f "$work/$name/bench.json" ] && cp "$work/$name/bench.json" "$parts/$name.json"
}
bench_step bench bench
switches="BIOSIM_CUDA_TRITON BIOSIM_CUDA_GRAPHS"
if timeout 120 "$python" -c "import sys, biosim.environment as e; known = {v.name for v in e.VARIABLES}; \
sys.exit(0 if set('$switches'.split()) <= known else 1)" 2>/dev/null; then
    if [ "$rehearse" = 1 ]; then  # CUDA graphs are refused off CUDA; tests/test_fused_triton.py covers the CPU side
        skip_step bench_fused bench_fused "a rehearsal: BIOSIM_CUDA_GRAPHS is refused off CUDA"
    else
        bench_step bench_fused bench_fused BIOSIM_CUDA_TRITON=on BIOSIM_CUDA_GRAPHS=on
    fi
else
    skip_step bench_fused bench_fused "biosim.environment does not know $switches in this checkout"
fi

# (train) one medium-tier run alone, only where --steps names it
train_metrics=", \"metrics_jsonl\": $(json_string "$work/train/train_medium_${device:-cuda}/metrics.jsonl")"
if [ -z "$device" ]; then
    skip_step train train_epoch "$no_torch_gpu" "$train_metrics"
elif [ "$rehearse" = 1 ]; then
    run_step train train_epoch "$train_metrics" -- "$python" -m benchmarks.gpu_check train --work "$work/train" \
        --epochs "$epochs" --device cpu --n-train 8 --n-test 8 --out "$parts/train_epoch.json"
else
    run_step train train_epoch "$train_metrics" -- "$python" -m benchmarks.gpu_check train --work "$work/train" \
        --epochs "$epochs" --out "$parts/train_epoch.json"
fi

# --- the one JSON file -------------------------------------------------------------------------------
if ! merge_report complete; then
    echo "gpu_check: merging the step files failed; they are in $parts" >&2
    exit 1
fi
echo "gpu_check: wrote $out" >&2
# A step a rehearsal skips by design (its "why" says so) is not a step that failed.
failed="$(grep -L -E '"status": "ok"|"why": "a rehearsal' "$parts"/*.step.json 2>/dev/null)"
[ -z "$failed" ] || { echo "gpu_check: steps not ok: $(basename -a $failed | sed 's/.step.json//' | tr '\n' ' ')" >&2; exit 1; }
exit 0
