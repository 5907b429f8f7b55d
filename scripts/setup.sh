#!/usr/bin/env bash
# Create .venv with pathmetric (editable) and every framework it adapts; idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
stamp=".venv/.pathmetric-setup"
want="$(sha256sum pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
# pip's own progress (bars and "Collecting ..." lines) shows what the two minutes are spent on
step() { echo "setup: $*" >&2; }
step "1/4 creating .venv (needs about 6.5 GB of disk; 3.2 GB of it are torch's CUDA libraries)"
python3 -m venv .venv
step "2/4 upgrading pip"
.venv/bin/python -m pip install --upgrade pip
# torch and torchvision first, pinned: the versions this project is tested with.
step "3/4 torch 2.14.1 and torchvision 0.29.1 (the largest download)"
.venv/bin/python -m pip install --progress-bar on "torch==2.14.1" "torchvision==0.29.1"
step "4/4 pathmetric (editable) with every framework it adapts: torch-pruning, NNI, INC, zoo"
.venv/bin/python -m pip install --progress-bar on -e ".[all]"
echo "$want" > "$stamp"
step "done: .venv is ready"
