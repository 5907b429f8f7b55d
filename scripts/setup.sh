#!/usr/bin/env bash
# Create .venv with pathmetric (editable) and every framework it adapts; idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
stamp=".venv/.pathmetric-setup"
want="$(sha256sum pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# torch and torchvision first, pinned: the versions this project is tested with.
.venv/bin/python -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
.venv/bin/python -m pip install -q -e ".[all]"
echo "$want" > "$stamp"
