#!/usr/bin/env bash
# The GPU install (Colab T4, or any CUDA machine that already has its torch): installs next to the torch it finds
# and never replaces it. Colab ships a CUDA 12 build of torch; letting pip pick a torch would fetch the newest one,
# a CUDA 13 build that a T4's driver cannot run.
#   bash scripts/install_gpu.sh                 # install (in Colab: !bash scripts/install_gpu.sh)
#   bash scripts/install_gpu.sh --dry-run DIR   # resolve only: pip's reports in DIR/*.json, nothing installed
# Order, as in Unsloth's own Colab notebooks: our pins with torch held fixed, then Unsloth with --no-deps, then
# xformers only where a wheel built for this torch exists.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
REPORTS=""
if [ "${1:-}" = "--dry-run" ]; then REPORTS=${2:?"--dry-run needs a folder for pip's reports"}; mkdir -p "$REPORTS"; fi
pip_install() {  # name, pip arguments...
  local name=$1; shift
  if [ -n "$REPORTS" ]; then
    "$PY" -m pip install --dry-run --quiet --report "$REPORTS/$name.json" "$@"
  else
    "$PY" -m pip install --quiet "$@"
  fi
}
# The installed torch, read from its metadata (no CUDA initialisation). A machine with no torch gets none from us.
TORCH=$("$PY" -c "import importlib.metadata as m; print(m.version('torch'))" 2>/dev/null) || {
  echo "error: no torch installed. Fix: install the PyTorch build for your CUDA first (https://pytorch.org), or use" \
       "scripts/setup.sh on a CPU machine." >&2; exit 1; }
HELD=$(mktemp); trap 'rm -f "$HELD"' EXIT
echo "torch==$TORCH" > "$HELD"
echo "[install] keeping torch $TORCH"
pip_install requirements -r requirements-gpu.txt -c "$HELD"
pip_install nodeps --no-deps -r requirements-nodeps.txt
case "$TORCH" in
  2.10.*) pip_install xformers --no-deps "xformers==0.0.34"  # built for torch 2.10.0 exactly
          echo "[install] xformers 0.0.34 (built for torch 2.10)";;
  *)      echo "[install] no xformers: none is built for torch $TORCH, so Unsloth uses PyTorch's SDPA attention" \
               "(same results, slightly slower)";;
esac
