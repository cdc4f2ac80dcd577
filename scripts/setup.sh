#!/usr/bin/env bash
# Set up (or refresh) ./.venv with ranktune and its dev tools. Safe to run again: it only installs
# what changed. Needs only python3 (3.10+).
#
# Every package is installed at the version constraints.txt pins (scripts/lock.py writes it from the
# tested environment), so every node of a Ray pool gets the same versions. torch: on a machine without
# an NVIDIA GPU we install a CPU build of the pinned version (RANKTUNE_TORCH_SPEC overrides it; add e.g.
# RANKTUNE_TORCH_PIP_ARGS="--index-url <your CPU wheel index>" where plain PyPI would give a CUDA build).
# With an NVIDIA GPU, pip's default (CUDA) build of the pinned version is installed, unless a torch of
# that version is already in .venv.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}

if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv"
  "$PYTHON" -m venv .venv
fi
PY=.venv/bin/python
LOCK=constraints.txt
torch_pin=$(grep -E '^torch==' "$LOCK")

# The installed torch's version without its local label (2.13.0+cpu -> 2.13.0), or nothing.
have_torch=$("$PY" -c "import torch; print('torch==' + torch.__version__.split('+')[0])" 2>/dev/null || true)
if [ "$have_torch" != "$torch_pin" ]; then
  "$PY" -m pip install -q --upgrade pip
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    echo "[setup] NVIDIA GPU found: installing pip's default (CUDA) build of $torch_pin"
    "$PY" -m pip install -q "$torch_pin"
  else
    spec=${RANKTUNE_TORCH_SPEC:-$torch_pin}
    echo "[setup] no NVIDIA GPU: installing a CPU torch build ($spec)"
    # shellcheck disable=SC2086
    "$PY" -m pip install -q "$spec" ${RANKTUNE_TORCH_PIP_ARGS:-}
  fi
fi

# Reinstall the project only when its dependency list or the lock changed.
stamp=.venv/.ranktune-installed
want=$(cat pyproject.toml "$LOCK" | sha256sum | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ] || ! "$PY" -c "import ranktune" >/dev/null 2>&1; then
  echo "[setup] installing ranktune and its dependencies into .venv (versions from $LOCK)"
  "$PY" -m pip install -q -c "$LOCK" -e ".[dev]"
  echo "$want" > "$stamp"
fi
echo "[setup] ready: $("$PY" -c 'import torch; print("torch", torch.__version__, "cuda" if torch.cuda.is_available() else "cpu")')"
