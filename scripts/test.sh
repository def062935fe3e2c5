#!/usr/bin/env bash
# The test suite (default selection: everything but the CUDA compile check).
source "$(dirname "$0")/ensure_venv.sh"
cd "$root"
exec python -m pytest "$@"
