#!/usr/bin/env bash
# The GPU check in one command (bench/gpu_check.py says what it runs and what it writes).
#   bash bench/gpu_check.sh                  # GPU machine with gpu_kit/ carried, Colab after install_gpu.sh, a CUDA box
#   bash bench/gpu_check.sh --small          # any machine: a tiny model, what needs CUDA skipped and said so
#   bash bench/gpu_check.sh --only sft_transformers,preference   # rerun some parts
# Writes $OUT (else bench/gpu_out/): summary.json and gpu_check.log. With gpu_kit/ (scripts/gpu_kit.sh) and Python
# 3.12 the kit's wheels are installed into a folder first (no registry needed) and put on PYTHONPATH, ahead of the
# machine's own packages; elsewhere the environment's packages are used as they are.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-bench/gpu_out}
export OUT
mkdir -p "$OUT"
PY=${PYTHON:-}
if [ -z "$PY" ]; then if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi; fi
{
  if [ -d gpu_kit/wheels ] && "$PY" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 12))'; then
    SITE=${GPU_KIT_SITE:-/tmp/gpu_kit_site}
    start=$(date +%s)
    rm -rf "$SITE"
    if ! "$PY" -m pip install -q --no-index --no-deps --no-compile --target "$SITE" gpu_kit/wheels/*.whl; then
      echo "[kit] error: the kit's wheels did not install into $SITE (see above). Fix: rebuild it with" \
           "bash scripts/gpu_kit.sh on a machine with the registry, then carry gpu_kit again."
      exit 3
    fi
    export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
    echo "[kit] $(ls gpu_kit/wheels | wc -l) wheels installed into $SITE in $(( $(date +%s) - start )) s, ahead of" \
         "the machine's packages on PYTHONPATH"
  elif [ -d gpu_kit/wheels ]; then
    echo "[kit] gpu_kit/ holds wheels for Python 3.12 and this is $("$PY" -V 2>&1): this environment's packages are used"
  else
    echo "[kit] no gpu_kit/ here: this environment's packages are used (Colab after scripts/install_gpu.sh, or .venv)"
  fi
  "$PY" bench/gpu_check.py "$@"
} 2>&1 | tee "$OUT/gpu_check.log"
exit "${PIPESTATUS[0]}"
