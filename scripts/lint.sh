#!/usr/bin/env bash
# Lint and type check (what CI runs before the tests): ruff (pyflakes, pycodestyle, import order)
# over the tree and mypy over the package, configured in pyproject.toml; fails on any finding.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh        # .venv with the dev extra (ruff, mypy)
.venv/bin/python -m ruff check .
.venv/bin/python -m mypy
