#!/usr/bin/env bash
# One-command set-up for a CPU (or single-GPU Linux) machine: a virtual environment in .venv/ at the repo root.
#   bash scripts/setup.sh          # then: source .venv/bin/activate
# Order matters: torch first (pinned, so no package can pull a several-GB CUDA build on a CPU box), then our
# requirements with that pin as a constraint, then unsloth with --no-deps (see requirements-nodeps.txt).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
PIP=".venv/bin/python -m pip"
quiet() { "$@" 2>&1 | { grep -v "is ignored: it is neither a file nor a directory" || true; }; }  # local mirror noise
quiet $PIP install -q --upgrade pip
quiet $PIP install -q torch==2.13.0
quiet $PIP install -q -c constraints-cpu.txt -r requirements-cpu.txt -r requirements-dev.txt
quiet $PIP install -q --no-deps -r requirements-nodeps.txt
# A torchvision wheel built against another torch makes `import unsloth` fail; we never need it.
$PIP uninstall -q -y torchvision 2>/dev/null || true
# tests/test_app.py drives Debian's Chromium through Playwright (no browser download)
if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } ||
      echo "note: chromium could not be installed (apt-get failed); the browser test will be skipped and say so"
  else
    echo "note: install chromium (sudo apt-get install -y chromium) for the browser test"
  fi
fi
.venv/bin/python -c "import torch, transformers, trl, peft; print('ok: torch', torch.__version__, '| transformers', transformers.__version__, '| trl', trl.__version__, '| peft', peft.__version__)"
