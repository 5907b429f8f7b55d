#!/usr/bin/env bash
# The test suite (what CI runs).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export MPLBACKEND=Agg
exec .venv/bin/python -m pytest -n 2 -q -p no:cacheprovider "$@" tests
