#!/usr/bin/env bash
# The main job on the embedded defaults (CPU, embedded MNIST digits).
source "$(dirname "$0")/ensure_venv.sh"
cd "$root"
exec biosim simulate --backend cpp_standalone --n-trials 20 "$@"
