#!/usr/bin/env bash
# The main job on the embedded default: `pathmetric demo` (scikit-learn digits, shipped CNN).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/pathmetric demo "$@"
