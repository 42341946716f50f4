#!/usr/bin/env bash
# The project's test command: the whole suite, offline.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1
python -m pytest -q "$@"
