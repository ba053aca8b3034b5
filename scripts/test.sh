#!/usr/bin/env bash
# Install with the test extras and run the whole suite (the README's test command; CI runs this too).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh --dev
exec .venv/bin/python -m pytest -q "$@"
