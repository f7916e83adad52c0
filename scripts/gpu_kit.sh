#!/usr/bin/env bash
# Builds gpu_kit/ on this (CPU) machine: the wheels the GPU machine lacks for the GPU check (bench/gpu_check.sh), for
# its Python 3.12 / manylinux x86_64, our GPU pins, less what the check never imports; prints its size.
#   bash scripts/gpu_kit.sh            # -> gpu_kit/wheels/*.whl + gpu_kit/MANIFEST.json (git-ignored, carried)
# Needs a Python with pip, packaging and wheel (the project's .venv has them) and the package registry. Downloads are
# kept in .cache/gpu_kit/, so a rebuild after a pin change fetches only what changed. The work is in gpu_kit.py.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-}
if [ -z "$PY" ]; then if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi; fi
exec "$PY" scripts/gpu_kit.py "$@"
