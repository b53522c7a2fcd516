#!/usr/bin/env bash
# Set up the environment (cached) and run the tests: the lint and import contracts, then pytest.
# Extra arguments go to pytest, e.g. `bash launch/test.sh -m "not slow"` for the fast loop.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash launch/setup.sh
export VLLM_TARGET_DEVICE=cpu DS_ACCELERATOR=cpu
.venv/bin/python -m pytest "$@"
