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
# llama-cpp-python (GGUF export and answering) has no Linux wheel on PyPI: pip compiles llama.cpp once (a few minutes
# on 2 cores; pip caches the wheel). Portable x86-64 build (AVX2, not -march=native), so a cached wheel runs on every
# CPU of this kind; no multimodal library (never used).
export CMAKE_ARGS="${CMAKE_ARGS:--DGGML_NATIVE=OFF -DLLAVA_BUILD=OFF}" CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)"
quiet $PIP install -q -c constraints-cpu.txt -r requirements-cpu.txt -r requirements-dev.txt
quiet $PIP install -q --no-deps -r requirements-nodeps.txt
# llama.cpp's converter (convert_hf_to_gguf.py, its conversion/ package and gguf-py) from the same llama-cpp-python
# source archive the library was built from: medreason/model/gguf.py runs it from .venv/share/llama.cpp, offline.
LLAMA_CPP_PYTHON=$(sed -n 's/^llama-cpp-python==\([0-9.]*\).*/\1/p' requirements-cpu.txt)
CONVERTER=.venv/share/llama.cpp
if [ "$(cat "$CONVERTER/VERSION" 2>/dev/null)" != "$LLAMA_CPP_PYTHON" ]; then
  src=$(mktemp -d)
  quiet $PIP download -q --no-deps --no-binary :all: "llama-cpp-python==$LLAMA_CPP_PYTHON" -d "$src"
  rm -rf "$CONVERTER" && mkdir -p "$CONVERTER"
  top="llama_cpp_python-$LLAMA_CPP_PYTHON/vendor/llama.cpp"
  tar -xzf "$src/llama_cpp_python-$LLAMA_CPP_PYTHON.tar.gz" -C "$CONVERTER" --strip-components=3 \
    "$top/convert_hf_to_gguf.py" "$top/conversion" "$top/gguf-py" "$top/LICENSE"
  echo "$LLAMA_CPP_PYTHON" > "$CONVERTER/VERSION"
  rm -rf "$src"
fi
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
.venv/bin/python -c "from medreason.config import quiet; quiet.install(); import torch, transformers, trl, peft, llama_cpp; print('ok: torch', torch.__version__, '| transformers', transformers.__version__, '| trl', trl.__version__, '| peft', peft.__version__, '| llama-cpp-python', llama_cpp.__version__)"
