#!/usr/bin/env bash
# Slurm and munge for the one-node Slurm tests (tests/integration/test_slurm.py): found on PATH, else
# installed from Debian's packages (slurmctld, slurmd, slurm-client, munge: ~3 MB, ~25 s). Idempotent.
# Exits 1 naming what is missing when it cannot install; the Slurm tests then fail with that reason.
set -euo pipefail
PATH=$PATH:/usr/sbin:/sbin  # the daemons live in sbin
missing=()
for command in munged slurmctld slurmd sbatch scontrol scancel; do
  command -v "$command" > /dev/null || missing+=("$command")
done
(( ${#missing[@]} == 0 )) && exit 0
packages=(slurmctld slurmd slurm-client munge)
if [[ $(id -u) != 0 ]] || ! command -v apt-get > /dev/null; then
  echo "slurm install: ${missing[*]} not found, and this machine cannot install them (needs root and" \
    "apt-get; as root: apt-get install ${packages[*]})" >&2
  exit 1
fi
echo "slurm install: ${missing[*]} not found; installing ${packages[*]} from Debian's packages"
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${packages[@]}" > /dev/null
