#!/usr/bin/env bash
# How to run benchmarks/gpu_check.py on a CUDA machine that has CUDA PyTorch but not this project's other
# dependencies and no network (docs/gpu.md). Prints the steps; `fetch` also runs the downloads.
#
#   scripts/gpu_check.sh                 # print the steps
#   scripts/gpu_check.sh fetch [DIR]     # download the wheels into DIR (default .whl, git-ignored)
#
# The pins come from constraints.txt (the lock of the project's tested venv). bitsandbytes (43 MB, CUDA 11.8-13.2 kernels in one
# wheel) is what makes the 8-bit rows run; without it they are skipped and the 7b row uses galore_adamw.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"

# At the versions constraints.txt pins (scripts/lock.py: the tested environment), like every other install.
WHEELS=()
for name in pydantic pydantic_core annotated-types typing-inspection typing_extensions bitsandbytes; do
  pin=$(grep -iE "^${name}==" "$repo/constraints.txt") || { echo "constraints.txt has no pin for $name" >&2; exit 2; }
  WHEELS+=("$pin")
done
# Python 3.12 (the device image's), x86-64; bitsandbytes is tagged manylinux_2_24.
PLATFORM="--only-binary=:all: --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64 \
--platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64"
# Script budget 480 s (the issue's 8 minutes) + wheel install and CUDA start-up; rows are written to $OUT
# as they finish, so a run killed at the limit still returns what it measured.
TIMEOUT_S=570
RUN='python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && PYTHONPATH=/tmp/site:$PWD python3 benchmarks/gpu_check.py --out $OUT'

if [ "${1:-}" = "fetch" ]; then
  dir="${2:-$repo/.whl}"
  pip="${PIP:-pip}"
  for wheel in "${WHEELS[@]}"; do
    # shellcheck disable=SC2086  # PLATFORM is a list of options
    "$pip" download -q $PLATFORM --no-deps -d "$dir" "$wheel"
  done
  du -ch "$dir"/*.whl | tail -1
  exit 0
fi

cat <<STEPS
1. Fetch the wheels here (network needed), into .whl/ (git-ignored; about 46 MB in all):
$(for wheel in "${WHEELS[@]}"; do echo "     pip download $PLATFORM --no-deps -d .whl $wheel"; done)
   or: scripts/gpu_check.sh fetch

2. What travels: the working tree (git-tracked and untracked files) plus .whl/ (carry: [".whl"]).
   Well under the 64 MiB limit: the tree is under 1 MB.

3. The one command line, run in the repository root on the device (python3 is its CUDA PyTorch):
     $RUN

4. Give it a timeout of $TIMEOUT_S s. It writes \$OUT/gpu_check.json and \$OUT/gpu_check.md (docs/gpu.md says
   what each column means). To rerun part of it: add --only "7b,1b" (row-label substrings).
STEPS
