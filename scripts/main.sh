#!/usr/bin/env bash
# The main job on the embedded defaults (CPU, embedded MNIST digits): the
# Dale-pruning protocol with the reference study's recipe on the study tier
# (train, validate in Brian2, draw, tabulate). docs/reference.md says why this recipe.
source "$(dirname "$0")/ensure_venv.sh"
cd "$root"
exec biosim protocol run dale_pruning --tier study --preset reference --processes 2 "$@"
