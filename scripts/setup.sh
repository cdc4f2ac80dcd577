#!/usr/bin/env bash
# Set up (or refresh) ./.venv with ranktune and its dev tools. Safe to run again: it only installs
# what changed. Needs only python3 (3.10+).
#
# torch: on a machine without an NVIDIA GPU we install a CPU build (RANKTUNE_TORCH_SPEC, default
# torch==2.13.0; add e.g. RANKTUNE_TORCH_PIP_ARGS="--index-url <your CPU wheel index>" where plain
# PyPI would give a CUDA build). With an NVIDIA GPU, install the torch build you want into .venv
# first; otherwise pip's default build is installed.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}

if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv"
  "$PYTHON" -m venv .venv
fi
PY=.venv/bin/python

if ! "$PY" -c "import torch" >/dev/null 2>&1; then
  "$PY" -m pip install -q --upgrade pip
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    echo "[setup] NVIDIA GPU found: installing pip's default (CUDA) torch build"
    "$PY" -m pip install -q torch
  else
    spec=${RANKTUNE_TORCH_SPEC:-torch==2.13.0}
    echo "[setup] no NVIDIA GPU: installing a CPU torch build ($spec)"
    # shellcheck disable=SC2086
    "$PY" -m pip install -q "$spec" ${RANKTUNE_TORCH_PIP_ARGS:-}
  fi
fi

# Reinstall the project only when its dependency list changed.
stamp=.venv/.ranktune-installed
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ] || ! "$PY" -c "import ranktune" >/dev/null 2>&1; then
  echo "[setup] installing ranktune and its dependencies into .venv"
  "$PY" -m pip install -q -e ".[dev]"
  echo "$want" > "$stamp"
fi
echo "[setup] ready: $("$PY" -c 'import torch; print("torch", torch.__version__, "cuda" if torch.cuda.is_available() else "cpu")')"
