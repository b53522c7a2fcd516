#!/usr/bin/env bash
# Set up the environment (cached) and run the tests: the lint and import contracts, then pytest.
# Extra arguments go to pytest, e.g. `bash launch/test.sh -m "not slow"` for the fast loop.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash launch/setup.sh
# Slurm + munge for tests/integration/test_slurm.py; where they cannot be installed, those tests fail saying why.
bash launch/slurm/install.sh || true
export VLLM_TARGET_DEVICE=cpu DS_ACCELERATOR=cpu
.venv/bin/python -m pytest "$@"
