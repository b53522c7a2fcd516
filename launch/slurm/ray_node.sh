#!/usr/bin/env bash
# One Ray node of the Slurm job (launch/slurm/grpo.sbatch runs this once per node with srun):
#   ray_node.sh head            start the head on this node (the job's first node), block
#   ray_node.sh worker ADDRESS  join the head at ADDRESS (host:port), block
# Blocking in the foreground: when the job step ends, Slurm stops exactly this node's Ray processes.
set -euo pipefail

role=${1:?usage: ray_node.sh head|worker [HEAD_ADDRESS]}
head_address=${2:-}
# Slurm's GPU count for this node when the job asked for GPUs; else GPUS_PER_NODE, else Ray detects them.
gpus=${SLURM_GPUS_ON_NODE:-${GPUS_PER_NODE:-}}
cpus=${SLURM_CPUS_ON_NODE:-$(nproc)}
# Site-specific `ray start` flags (ports beside another Ray, --temp-dir on local disk), split on spaces.
read -r -a extra <<< "${RAY_START_ARGS:-}"

# Collectives (RCCL/NCCL, gloo) must leave the node on a real interface. Take the one that carries the
# default route unless the site names one (e.g. an InfiniBand/RoCE port: NCCL_SOCKET_IFNAME=ib0).
default_ifname() {
  ip -o -4 route show to default 2>/dev/null | awk '{for (i = 1; i < NF; i++) if ($i == "dev") {print $(i + 1); exit}}'
}
ifname=${NCCL_SOCKET_IFNAME:-$(default_ifname)}
if [[ -z "$ifname" || "$ifname" == "lo" ]]; then
  ifname=$(ip -o -4 addr show up scope global | awk '$2 != "lo" {print $2; exit}')
fi
if [[ -z "$ifname" ]]; then
  echo "ray_node.sh: no non-loopback interface on $(hostname); set NCCL_SOCKET_IFNAME" >&2
  exit 1
fi
export NCCL_SOCKET_IFNAME=$ifname GLOO_SOCKET_IFNAME=${GLOO_SOCKET_IFNAME:-$ifname}
node_ip=$(ip -o -4 addr show dev "$ifname" | awk '{split($4, a, "/"); print a[1]; exit}')

# AMD: Ray narrows HIP_VISIBLE_DEVICES per actor. Slurm's ROCR_VISIBLE_DEVICES would sit under it (Ray
# refuses to start GPU work while it is set alone), and a node-wide CUDA_VISIBLE_DEVICES would contradict
# it for vLLM: hand Slurm's GPU list to Ray as HIP_VISIBLE_DEVICES and drop the others. The NOSET
# switches some ROCm images set would show every actor all GPUs (rl/core/platform.py says why that breaks us).
if [[ -n "${ROCR_VISIBLE_DEVICES:-}" && -z "${HIP_VISIBLE_DEVICES:-}" ]]; then
  export HIP_VISIBLE_DEVICES=$ROCR_VISIBLE_DEVICES
fi
if [[ -n "${HIP_VISIBLE_DEVICES:-}" ]]; then
  unset ROCR_VISIBLE_DEVICES CUDA_VISIBLE_DEVICES
fi
unset RAY_EXPERIMENTAL_NOSET_HIP_VISIBLE_DEVICES RAY_EXPERIMENTAL_NOSET_ROCR_VISIBLE_DEVICES \
  RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES

common=(--block --node-ip-address="$node_ip" --num-cpus="$cpus" --disable-usage-stats "${extra[@]}")
[[ -n "$gpus" ]] && common+=(--num-gpus="$gpus")
case $role in
  head)
    exec ray start --head "${common[@]}" --port="${RAY_PORT:-6379}" \
      --dashboard-host=0.0.0.0 --dashboard-port="${RAY_DASHBOARD_PORT:-8265}" ;;
  worker)
    exec ray start "${common[@]}" --address="${head_address:?worker needs the head address}" ;;
  *)
    echo "ray_node.sh: unknown role $role (head | worker)" >&2
    exit 2 ;;
esac
