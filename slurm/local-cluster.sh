#!/usr/bin/env bash
# A real SLURM cluster on this machine, for tests and demos (needs root and apt-get): one node on
# localhost, or two nodes n1 and n2 in network namespaces.
#
#   slurm/local-cluster.sh start [--nodes 1|2]   # install munge + slurmctld + slurmd if missing, write slurm.conf, start
#   slurm/local-cluster.sh status   # daemons and sinfo
#   slurm/local-cluster.sh env      # print `export SLURM_CONF=...` (eval it so sbatch/squeue/submitit find it)
#   slurm/local-cluster.sh exec CMD...   # run CMD where slurmctld is reachable (two nodes: in n1's namespace)
#   slurm/local-cluster.sh stop     # stop the daemons (state is kept in $TOOLKIT_SLURM_STATE)
#
# The configuration lives in its own folder ($TOOLKIT_SLURM_STATE, default /tmp/toolkit-slurm), never in
# /etc/slurm, so an existing cluster configuration is not touched. Facts this relies on (Debian bookworm,
# SLURM 22.05): as root, ProctrackType=proctrack/linuxproc, TaskPlugin=task/none, SelectType=select/cons_tres
# and SlurmUser=root run in a container; accounting is absent (sacct fails; submitit only warns).
#
# Two nodes (--nodes 2): two network namespaces joined by a veth pair, named tk0 in both, with 10.77.0.1/24
# (n1) and 10.77.0.2/24 (n2) that exist only inside them, lo up in each. slurmctld and slurmd n1 run in the
# first, slurmd n2 in the second, each started as
#   nsenter --net=/run/netns/NS unshare --uts sh -c 'hostname nN; exec DAEMON -f CONF'
# (not `ip netns exec`, which remounts /sys and breaks slurmd's cgroup check). slurm.conf gives every node
# its NodeAddr, SlurmctldHost=n1(10.77.0.1), and slurmd spool, pid and log paths with %n. slurmctld is
# reachable only from inside the namespaces: run sbatch, squeue, scontrol and `python -m launch` through
# `local-cluster.sh exec ...`. munged is the machine's own (its socket is a file, reachable from any
# namespace). `stop` deletes the namespaces. Daemons in another network namespace do not count as
# "another slurmctld" for a single-node start (they cannot take its ports), so both kinds can run at once.
set -euo pipefail

STATE="${TOOLKIT_SLURM_STATE:-/tmp/toolkit-slurm}"
CONF="$STATE/slurm.conf"
HOST="$(hostname -s)"
ADDRS=(10.77.0.1 10.77.0.2)
IFNAME=tk0

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

# the number of nodes of the cluster in $STATE (1 unless it was started with --nodes 2)
nodes() { if [ -s "$STATE/nodes" ]; then cat "$STATE/nodes"; else echo 1; fi; }

# namespace names for this state folder (unique per $STATE, so two clusters never share them)
ns_names() {
  local tag
  tag="tks$(printf '%s' "$STATE" | cksum | cut -d' ' -f1)"
  echo "${tag}n1 ${tag}n2"
}

# run a command where slurmctld is reachable: n1's namespace for two nodes, here for one
in_cluster() {
  if [ "$(nodes)" = 2 ]; then
    nsenter --net="/run/netns/$(head -1 "$STATE/netns")" "$@"
  else
    "$@"
  fi
}

make_netns() {
  local ns1 ns2 ns
  read -r ns1 ns2 <<<"$(ns_names)"
  printf '%s\n%s\n' "$ns1" "$ns2" >"$STATE/netns.tmp"
  mv "$STATE/netns.tmp" "$STATE/netns"
  for ns in "$ns1" "$ns2"; do
    [ -e "/run/netns/$ns" ] || ip netns add "$ns"
  done
  if ! ip -n "$ns1" link show "$IFNAME" >/dev/null 2>&1; then
    # made inside n1's namespace, the peer moved straight into n2's: no name in this namespace
    ip -n "$ns1" link add "$IFNAME" type veth peer name "$IFNAME" netns "$ns2"
    ip -n "$ns1" addr add "${ADDRS[0]}/24" dev "$IFNAME"
    ip -n "$ns2" addr add "${ADDRS[1]}/24" dev "$IFNAME"
  fi
  for ns in "$ns1" "$ns2"; do
    ip -n "$ns" link set "$IFNAME" up
    ip -n "$ns" link set lo up
  done
}

# SIGKILL every process left in the cluster's namespaces (a slurmd or slurmstepd that outlived `stop`'s wait,
# job tasks): they would keep a deleted namespace alive, and a stepd named [JOB.STEP] would look like a job
# of another cluster that numbers its jobs from 1 as well
kill_netns_pids() {
  local ns pid
  [ -s "$STATE/netns" ] || return 0
  while read -r ns; do
    [ -n "$ns" ] && [ -e "/run/netns/$ns" ] || continue
    for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -9 "$pid" 2>/dev/null || true; done
  done <"$STATE/netns"
}

delete_netns() {
  local ns
  [ -s "$STATE/netns" ] || return 0
  while read -r ns; do
    if [ -n "$ns" ] && [ -e "/run/netns/$ns" ]; then ip netns delete "$ns" || true; fi
  done <"$STATE/netns"
  rm -f "$STATE/netns"
}

# start DAEMON (slurmctld or slurmd, which daemonise) as node NAME in namespace NS, with its own hostname
start_in_ns() {
  local ns="$1" name="$2" daemon="$3"
  nsenter --net="/run/netns/$ns" unshare --uts sh -c "hostname $name; exec $daemon -f '$CONF'"
}

common_conf() {
  cat <<EOF
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
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/none
EOF
}

write_conf() {
  mkdir -p "$STATE/ctld" "$STATE/d" "$STATE/log"
  local cpus mem
  cpus="$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc)"  # nproc follows OMP_NUM_THREADS; the node has what this process may use
  mem="$(awk '/MemTotal/ {printf "%d", $2 / 1024 * 0.9}' /proc/meminfo)"
  {
    echo "# written by slurm/local-cluster.sh: single-node test cluster"
    echo "ClusterName=toolkit-local"
    echo "SlurmctldHost=$HOST"
    common_conf
    echo "SlurmdSpoolDir=$STATE/d"
    echo "SlurmdPidFile=$STATE/slurmd.pid"
    echo "SlurmdLogFile=$STATE/log/slurmd.log"
    echo "NodeName=$HOST CPUs=$cpus RealMemory=$mem State=UNKNOWN"
    echo "PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO"
  } >"$CONF.tmp"
  mv "$CONF.tmp" "$CONF"
}

write_conf_two_nodes() {
  mkdir -p "$STATE/ctld" "$STATE/d/n1" "$STATE/d/n2" "$STATE/log"
  local cpus mem
  cpus="$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc)"  # nproc follows OMP_NUM_THREADS; the node has what this process may use
  mem="$(awk '/MemTotal/ {printf "%d", $2 / 1024 * 0.45}' /proc/meminfo)"  # each node: half of 90 %
  {
    echo "# written by slurm/local-cluster.sh: two-node test cluster (n1, n2 in network namespaces)"
    echo "ClusterName=toolkit-local2"
    echo "SlurmctldHost=n1(${ADDRS[0]})"
    common_conf
    echo "SlurmdSpoolDir=$STATE/d/%n"
    echo "SlurmdPidFile=$STATE/slurmd-%n.pid"
    echo "SlurmdLogFile=$STATE/log/slurmd-%n.log"
    echo "NodeName=n1 NodeHostname=n1 NodeAddr=${ADDRS[0]} CPUs=$cpus RealMemory=$mem State=UNKNOWN"
    echo "NodeName=n2 NodeHostname=n2 NodeAddr=${ADDRS[1]} CPUs=$cpus RealMemory=$mem State=UNKNOWN"
    echo "PartitionName=debug Nodes=n1,n2 Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO"
  } >"$CONF.tmp"
  mv "$CONF.tmp" "$CONF"
}

alive() { [ -r "/proc/$1/status" ] && ! grep -q '^State:[[:space:]]*Z' "/proc/$1/status"; }

# a live (not zombie) process with this exact name
running() {
  local pid
  for pid in $(pgrep -x "$1"); do alive "$pid" && return 0; done
  return 1
}

# our daemon: the pid file $STATE/${2:-$1}.pid names a live process called $1
ours() {
  local pidfile="$STATE/${2:-$1}.pid" pid
  [ -s "$pidfile" ] || return 1
  pid="$(cat "$pidfile")"
  [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$1" ] && alive "$pid"
}

# our daemons as NAME:PIDFILE (slurmctld, then slurmd or slurmd-n1 and slurmd-n2)
daemon_ids() {
  if [ "$(nodes)" = 2 ]; then echo "slurmctld:slurmctld slurmd:slurmd-n1 slurmd:slurmd-n2"
  else echo "slurmctld:slurmctld slurmd:slurmd"; fi
}

netns_of() { readlink "/proc/$1/ns/net" 2>/dev/null || true; }

# a daemon in *this* network namespace that is not ours would take our ports (one in another namespace,
# e.g. of a two-node cluster, would not)
check_foreign() {
  local d pid here
  here="$(netns_of self)"
  for d in slurmctld slurmd; do
    for pid in $(pgrep -x "$d"); do
      alive "$pid" || continue
      [ "$(netns_of "$pid")" = "$here" ] || continue
      if [ "$(cat "$STATE/$d.pid" 2>/dev/null)" != "$pid" ]; then
        log "another $d is running (not started from $STATE): stop it first"
        exit 1
      fi
    done
  done
}

# slurmstepd processes left in the network namespace NSLINK (a /proc/PID/ns/net link)
kill_stepds() {
  local nslink="$1" pid
  for pid in $(pgrep -f "slurmstepd: \\["); do
    if [ "$(netns_of "$pid")" = "$nslink" ]; then kill "$pid" 2>/dev/null || true; fi
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
  local n=1
  while [ $# -gt 0 ]; do
    case "$1" in
      --nodes) [ $# -ge 2 ] || { log "--nodes needs a value (1 or 2)"; exit 2; }; n="$2"; shift 2 ;;
      --nodes=*) n="${1#--nodes=}"; shift ;;
      *) log "start: unknown option '$1' (expected --nodes 1|2)"; exit 2 ;;
    esac
  done
  if [ "$n" != 1 ] && [ "$n" != 2 ]; then log "--nodes must be 1 or 2, got '$n'"; exit 2; fi
  if [ "$n" = 2 ]; then start_two_nodes; return; fi
  if [ "$(nodes)" = 2 ]; then
    if ours slurmctld || ours slurmd slurmd-n1 || ours slurmd slurmd-n2; then
      log "$STATE holds a running two-node cluster: stop it first"; exit 1
    fi
    rm -f "$STATE/nodes"
  fi
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

start_two_nodes() {
  local ns1 ns2 tool
  if [ "$(id -u)" != 0 ]; then log "two nodes need root (network namespaces)"; exit 1; fi
  for tool in ip nsenter unshare; do
    command -v "$tool" >/dev/null || { log "'$tool' is not installed (iproute2 / util-linux)"; exit 1; }
  done
  mkdir -p "$STATE"
  if [ "$(nodes)" = 1 ] && { ours slurmctld || ours slurmd; }; then
    log "$STATE holds a running single-node cluster: stop it first"; exit 1
  fi
  install_packages
  echo 2 >"$STATE/nodes.tmp"
  mv "$STATE/nodes.tmp" "$STATE/nodes"
  make_netns
  read -r ns1 ns2 <<<"$(ns_names)"
  write_conf_two_nodes
  start_munge
  export SLURM_CONF="$CONF"
  ours slurmctld || start_in_ns "$ns1" n1 slurmctld
  ours slurmd slurmd-n1 || start_in_ns "$ns1" n1 slurmd
  ours slurmd slurmd-n2 || start_in_ns "$ns2" n2 slurmd
  for _ in $(seq 1 60); do
    if [ "$(in_cluster sinfo -h -N -o '%N %T' 2>/dev/null | grep -cE ' (idle|mixed|allocated)$')" = 2 ]; then
      log "up: $(in_cluster sinfo -h -N -o '%N %c CPUs %m MB %T' | tr '\n' ';')" \
          "n1 ${ADDRS[0]} (netns $ns1), n2 ${ADDRS[1]} (netns $ns2)"
      echo "export SLURM_CONF=$CONF"
      return 0
    fi
    in_cluster scontrol update NodeName=n1,n2 State=RESUME >/dev/null 2>&1 || true
    sleep 1
  done
  log "SLURM did not come up with two nodes; see $STATE/log/"
  tail -5 "$STATE"/log/*.log >&2 || true
  exit 1
}

stop() {
  export SLURM_CONF="$CONF"
  local id nslinks="" up
  if ours slurmctld; then in_cluster scancel --full --user=root >/dev/null 2>&1 || true; sleep 1; fi
  for id in $(daemon_ids); do
    if ours "${id%%:*}" "${id#*:}"; then
      nslinks="$nslinks $(netns_of "$(cat "$STATE/${id#*:}.pid")")"
      kill "$(cat "$STATE/${id#*:}.pid")" 2>/dev/null || true
    fi
  done
  for _ in $(seq 1 20); do
    up=0
    for id in $(daemon_ids); do if ours "${id%%:*}" "${id#*:}"; then up=1; fi; done
    [ "$up" = 0 ] && break
    sleep 0.5
  done
  if [ "$(nodes)" = 2 ]; then
    for id in $nslinks; do kill_stepds "$id"; done
    kill_netns_pids
    delete_netns
  else
    kill_stepds "$(netns_of self)"
  fi
  log "stopped"
}

status() {
  export SLURM_CONF="$CONF"
  local id
  if running munged; then echo "munged: running"; else echo "munged: stopped"; fi
  for id in $(daemon_ids); do
    if ours "${id%%:*}" "${id#*:}"; then echo "${id#*:}: running ($STATE)"
    elif running "${id%%:*}"; then echo "${id#*:}: another instance"
    else echo "${id#*:}: stopped"; fi
  done
  if ours slurmctld; then in_cluster sinfo; fi
}

cmd="${1:-}"
[ $# -gt 0 ] && shift
case "$cmd" in
  start) start "$@" ;;
  stop) stop ;;
  status) status ;;
  env) echo "export SLURM_CONF=$CONF" ;;
  exec) export SLURM_CONF="$CONF"; in_cluster "$@" ;;
  *) echo "usage: $0 start [--nodes 1|2] | stop | status | env | exec CMD..." >&2; exit 2 ;;
esac
