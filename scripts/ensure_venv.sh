# Sourced by main.sh and test.sh: create (or reuse) .venv and install the
# project with the exact versions of requirements/constraints.txt. The
# install is redone only when setup.cfg or the constraints change.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${BIOSIM_VENV:-$root/.venv}"
python="${PYTHON:-python3.11}"
command -v "$python" >/dev/null 2>&1 || python=python3
stamp="$venv/.biosim-install-stamp"
want="$(cat "$root/setup.cfg" "$root/requirements/constraints.txt" | sha256sum | cut -d' ' -f1)"
if [ ! -x "$venv/bin/python" ]; then
    echo "creating virtual environment in $venv" >&2
    "$python" -m venv "$venv"
fi
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    echo "installing biosim and its pinned dependencies into $venv (about a minute)" >&2
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
        -c "$root/requirements/constraints.txt" -e "$root[cuda,curand,distributed,dev]"
    echo "$want" > "$stamp"
fi
export PATH="$venv/bin:$PATH"
