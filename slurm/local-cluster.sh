#!/usr/bin/env bash
# A real single-node SLURM cluster on localhost, for tests and demos (needs root and apt-get).
#
#   slurm/local-cluster.sh start    # install munge + slurmctld + slurmd if missing, write slurm.conf, start
#   slurm/local-cluster.sh status   # daemons and sinfo
#   slurm/local-cluster.sh env      # print `export SLURM_CONF=...` (eval it so sbatch/squeue/submitit find it)
#   slurm/local-cluster.sh stop     # stop the daemons (state is kept in $TOOLKIT_SLURM_STATE)
#
# The configuration lives in its own folder ($TOOLKIT_SLURM_STATE, default /tmp/toolkit-slurm), never in
# /etc/slurm, so an existing cluster configuration is not touched. Facts this relies on (Debian bookworm,
# SLURM 22.05): as root, ProctrackType=proctrack/linuxproc, TaskPlugin=task/none, SelectType=select/cons_tres
# and SlurmUser=root run in a container; accounting is absent (sacct fails; submitit only warns).
set -euo pipefail

STATE="${TOOLKIT_SLURM_STATE:-/tmp/toolkit-slurm}"
CONF="$STATE/slurm.conf"
HOST="$(hostname -s)"

log() { printf '[local-cluster] %s\n' "$*" >&2; }

install_packages() {
  if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v sbatch >/dev/null \
      && command -v munged >/dev/null; then
    return
  fi
  if [ "$(id -u)" != 0 ]; then
    log "munge/slurm are not installed and this is not root: install slurmctld slurmd slurm-client munge"
    exit 1
  fi
  log "installing munge and SLURM with apt-get"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq --no-install-recommends slurmctld slurmd slurm-client munge >/dev/null
}

write_conf() {
  mkdir -p "$STATE/ctld" "$STATE/d" "$STATE/log"
  local cpus mem
  cpus="$(nproc)"
  mem="$(awk '/MemTotal/ {printf "%d", $2 / 1024 * 0.9}' /proc/meminfo)"
  cat >"$CONF" <<EOF
# written by slurm/local-cluster.sh: single-node test cluster
ClusterName=toolkit-local
SlurmctldHost=$HOST
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CryptoType=crypto/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
ReturnToService=2
JobRequeue=1
KillWait=20
MinJobAge=600
SlurmctldTimeout=30
SlurmdTimeout=30
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/d
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/none
NodeName=$HOST CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
EOF
}

alive() { [ -r "/proc/$1/status" ] && ! grep -q '^State:[[:space:]]*Z' "/proc/$1/status"; }

# a live (not zombie) process with this exact name
running() {
  local pid
  for pid in $(pgrep -x "$1"); do alive "$pid" && return 0; done
  return 1
}

# our daemon: its pid file in $STATE names a live process of that name
ours() {
  local pidfile="$STATE/$1.pid" pid
  [ -s "$pidfile" ] || return 1
  pid="$(cat "$pidfile")"
  [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$1" ] && alive "$pid"
}

check_foreign() {
  for d in slurmctld slurmd; do
    if running "$d" && ! ours "$d"; then
      log "another $d is running (not started from $STATE): stop it first"
      exit 1
    fi
  done
}

start_munge() {
  if running munged; then return; fi
  if [ ! -s /etc/munge/munge.key ]; then
    if command -v mungekey >/dev/null; then mungekey --create --force >/dev/null 2>&1 || true; fi
    if [ ! -s /etc/munge/munge.key ]; then dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 2>/dev/null; fi
  fi
  chown munge:munge /etc/munge/munge.key 2>/dev/null || true
  chmod 400 /etc/munge/munge.key
  mkdir -p /run/munge /var/log/munge /var/lib/munge
  chown munge:munge /run/munge /var/log/munge /var/lib/munge 2>/dev/null || true
  if id munge >/dev/null 2>&1; then
    su -s /bin/sh munge -c "munged" || munged --force
  else
    munged --force
  fi
}

start() {
  install_packages
  check_foreign
  write_conf
  start_munge
  export SLURM_CONF="$CONF"
  ours slurmctld || slurmctld -f "$CONF"
  ours slurmd || slurmd -f "$CONF"
  for _ in $(seq 1 60); do
    if sinfo -h -o '%T' 2>/dev/null | grep -qE '^(idle|mixed|allocated)'; then
      log "up: $(sinfo -h -o '%P %D %c CPUs %m MB %T' | head -1)"
      echo "export SLURM_CONF=$CONF"
      return 0
    fi
    scontrol update NodeName="$HOST" State=RESUME >/dev/null 2>&1 || true
    sleep 1
  done
  log "SLURM did not come up; see $STATE/log/"
  tail -5 "$STATE/log/slurmctld.log" "$STATE/log/slurmd.log" >&2 || true
  exit 1
}

stop() {
  export SLURM_CONF="$CONF"
  if ours slurmctld; then scancel --full --user=root >/dev/null 2>&1 || true; sleep 1; fi
  for d in slurmd slurmctld; do
    if ours "$d"; then kill "$(cat "$STATE/$d.pid")" 2>/dev/null || true; fi
  done
  for _ in $(seq 1 20); do ours slurmd || ours slurmctld || break; sleep 0.5; done
  pkill -f "slurmstepd: \[" 2>/dev/null || true
  log "stopped"
}

status() {
  export SLURM_CONF="$CONF"
  if running munged; then echo "munged: running"; else echo "munged: stopped"; fi
  for d in slurmctld slurmd; do
    if ours "$d"; then echo "$d: running ($STATE)"; elif running "$d"; then echo "$d: another instance";
    else echo "$d: stopped"; fi
  done
  if ours slurmctld; then sinfo; fi
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  env) echo "export SLURM_CONF=$CONF" ;;
  *) echo "usage: $0 start|stop|status|env" >&2; exit 2 ;;
esac
