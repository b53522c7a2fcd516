#!/usr/bin/env bash
# Set up the environment (cached) and run the CPU demo on the tiny offline Qwen3-VL with local Ray:
# builds the model and the synthetic data, runs conf/default.yaml's pipeline, prints grounded answers.
# Extra arguments go to rl.launch, e.g. `bash launch/demo.sh rollout.temperature=0.7`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash launch/setup.sh
export VLLM_TARGET_DEVICE=cpu DS_ACCELERATOR=cpu
exec .venv/bin/python -m rl.launch --config conf/default.yaml "$@"
