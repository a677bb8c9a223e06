#!/usr/bin/env bash
# A single-node SLURM cluster on this machine (tests/test_slurm.py starts it; a starting point for a
# lab's own: docs/config.md#running-on-slurm). Installs Debian's slurmctld, slurmd, slurm-client and
# munge where they are missing and apt-get can (as root), writes slurm.conf under $STATE, starts munged,
# slurmctld and slurmd by hand (no systemd), and waits until the node is idle. Prints the slurm.conf
# path: `export SLURM_CONF=...` before sbatch, squeue and scancel. Stop it with stop_cluster.sh.
set -euo pipefail
STATE=${PNEUMO_EXP_SLURM_STATE:-/tmp/pneumo_exp_slurm}
HERE=$(cd "$(dirname "$0")" && pwd)

if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        export DEBIAN_FRONTEND=noninteractive PACKAGES="slurmctld slurmd slurm-client munge"
        apt-get install -y -q $PACKAGES >/dev/null 2>&1 || { apt-get update -q >/dev/null && apt-get install -y -q $PACKAGES >/dev/null; }
    else
        echo "error: slurmctld, slurmd and munged are not installed, and this is no root with apt-get:" \
             "install Debian's slurmctld slurmd slurm-client munge" >&2
        exit 2
    fi
fi

mkdir -p "$STATE"/{state,spool,log} /etc/munge /run/munge /var/lib/munge /var/log/munge
if [ ! -s /etc/munge/munge.key ]; then
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
fi
chown -R munge:munge /etc/munge /run/munge /var/lib/munge /var/log/munge 2>/dev/null || true
chmod 400 /etc/munge/munge.key
pgrep -x munged >/dev/null || su -s /bin/sh munge -c munged 2>/dev/null || munged --force

NODE=$(hostname -s)
MEMORY=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 1024 ))  # MB, less 1 GB for the system
sed -e "s|@STATE@|$STATE|g" -e "s|@NODE@|$NODE|g" -e "s|@CPUS@|$(nproc)|g" -e "s|@MEMORY@|$MEMORY|g" \
    "$HERE/slurm.conf.in" > "$STATE/slurm.conf"
export SLURM_CONF="$STATE/slurm.conf"

pgrep -x slurmctld >/dev/null || slurmctld -c   # -c: a clean start, no jobs from an earlier cluster
pgrep -x slurmd >/dev/null || slurmd
for _ in $(seq 60); do
    if sinfo -h -N -o %t 2>/dev/null | grep -qx idle; then
        echo "$SLURM_CONF"
        exit 0
    fi
    sleep 1
done
echo "error: the node did not become idle in 60 s: see $STATE/log/" >&2
exit 1
