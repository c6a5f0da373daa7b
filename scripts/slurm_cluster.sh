#!/usr/bin/env bash
# A real two-node SLURM cluster on this one machine, for tests and local trials.
#
#   scripts/slurm_cluster.sh start    # munged + slurmctld + slurmd n1 + slurmd n2, waits for n[1-2] idle
#   scripts/slurm_cluster.sh status   # daemons alive? prints `sinfo`
#   scripts/slurm_cluster.sh env      # prints `export SLURM_CONF=...` for sinfo/sbatch/srun in a shell
#   scripts/slurm_cluster.sh stop     # cancels this cluster's jobs, stops the daemons it started, by pid
#
# Needs root and Debian's `slurm-wlm` + `munge` (apt-get install -y slurm-wlm munge). No systemd, no
# cgroups. Everything (config, munge key and socket, spool, state, logs, pid files) lives in one folder,
# LITFT_SLURM_DIR (default /run/litft-slurm); the system munge/slurm configuration is not touched.
# Clients find this cluster through SLURM_CONF=$LITFT_SLURM_DIR/slurm.conf.
#
# Environment:
#   LITFT_SLURM_DIR         state folder [/run/litft-slurm]
#   LITFT_SLURM_PORT        slurmctld port [16817]
#   LITFT_SLURM_NODE_PORTS  slurmd ports of n1 and n2, comma-separated [17001,17002]
#   LITFT_SLURM_CPUS        CPUs each node announces [number of CPUs of this machine]
set -euo pipefail

DIR=${LITFT_SLURM_DIR:-/run/litft-slurm}
CTLD_PORT=${LITFT_SLURM_PORT:-16817}
IFS=, read -r N1_PORT N2_PORT <<<"${LITFT_SLURM_NODE_PORTS:-17001,17002}"
CPUS=${LITFT_SLURM_CPUS:-$(getconf _NPROCESSORS_ONLN)}  # not nproc: it obeys OMP_NUM_THREADS
NODES=(n1 n2)
CONF=$DIR/slurm.conf
export SLURM_CONF=$CONF

die() { echo "slurm_cluster: $*" >&2; exit 1; }

pid_alive() { # pidfile
  [[ -s $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null
}

write_config() {
  local host
  host=$(hostname -s)
  mkdir -p "$DIR"/{state,log,spool/n1,spool/n2,munge}
  chmod 0755 "$DIR"
  # munged insists on its own folder: owned by munge, writable by no one else, searchable by all (socket).
  chown munge:munge "$DIR/munge"
  chmod 0755 "$DIR/munge"
  if [[ ! -s $DIR/munge/munge.key ]]; then
    mungekey --create --keyfile="$DIR/munge/munge.key" >/dev/null
    chown munge:munge "$DIR/munge/munge.key"
    chmod 0600 "$DIR/munge/munge.key"
  fi
  cat >"$CONF.tmp" <<EOF
# Written by scripts/slurm_cluster.sh: two slurmd daemons on loopback posing as nodes n1 and n2.
ClusterName=litft
SlurmctldHost=$host
SlurmctldPort=$CTLD_PORT
AuthType=auth/munge
# cred_expire: step credential lifetime, and how long a requeued job waits before it may start again
# (default 120 s; short here so that the preemption test is quick).
AuthInfo=socket=$DIR/munge/munge.socket.2,cred_expire=10
CredType=cred/munge
SlurmUser=root
SlurmdUser=root
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
SchedulerType=sched/backfill
# A small cluster: look at pending jobs (e.g. a requeued one whose begin time has come) every 2 s.
SchedulerParameters=sched_interval=2,bf_interval=2
SelectType=select/cons_tres
# Allocate CPUs, not cores: two 1-task jobs share a 2-CPU node even when its CPUs are hyperthreads.
SelectTypeParameters=CR_CPU
ReturnToService=2
JobRequeue=1
KillWait=5
MinJobAge=300
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd-%n.pid
SlurmdSpoolDir=$DIR/spool/%n
StateSaveLocation=$DIR/state
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd-%n.log
NodeName=n1 NodeHostname=$host NodeAddr=127.0.0.1 Port=$N1_PORT CPUs=$CPUS RealMemory=1000
NodeName=n2 NodeHostname=$host NodeAddr=127.0.0.1 Port=$N2_PORT CPUs=$CPUS RealMemory=1000
PartitionName=debug Nodes=n1,n2 Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
EOF
  mv "$CONF.tmp" "$CONF"
}

# start_daemon NAME COMMAND...: runs COMMAND in the foreground of a new session, records its pid.
start_daemon() {
  local name=$1; shift
  if pid_alive "$DIR/$name.litft-pid"; then return 0; fi
  setsid "$@" >>"$DIR/log/$name.out" 2>&1 </dev/null &
  echo $! >"$DIR/$name.litft-pid"
}

wait_for() { # seconds description command...
  local secs=$1 what=$2; shift 2
  local end=$((SECONDS + secs))
  until "$@" >/dev/null 2>&1; do
    (( SECONDS < end )) || return 1
    sleep 0.5
  done
  echo "slurm_cluster: $what" >&2
}

nodes_idle() {
  [[ $(sinfo -h -N -o '%N %t' 2>/dev/null | awk '$2=="idle"' | wc -l) -eq 2 ]]
}

no_jobs() {
  [[ -z $(squeue -h -o %i 2>/dev/null) ]]
}

cmd_start() {
  [[ $(id -u) -eq 0 ]] || die "needs root (slurmd runs jobs as their owner)"
  for exe in munged mungekey slurmctld slurmd sinfo; do
    command -v "$exe" >/dev/null || die "$exe not found: apt-get install -y slurm-wlm munge"
  done
  write_config
  start_daemon munged setpriv --reuid=munge --regid=munge --clear-groups \
    munged --foreground --socket="$DIR/munge/munge.socket.2" --key-file="$DIR/munge/munge.key" \
    --pid-file="$DIR/munge/munged.pid" --log-file="$DIR/munge/munged.log" --seed-file="$DIR/munge/munged.seed"
  wait_for 20 "munged up" test -S "$DIR/munge/munge.socket.2" || die "munged did not start: see $DIR/log/munged.out"
  start_daemon slurmctld slurmctld -D -f "$CONF"
  wait_for 30 "slurmctld up" scontrol ping || die "slurmctld did not start: see $DIR/log/slurmctld.log"
  for n in "${NODES[@]}"; do
    start_daemon "slurmd-$n" slurmd -D -N "$n" -f "$CONF"
  done
  wait_for 60 "n[1-2] idle" nodes_idle || { sinfo -N >&2 || true; die "nodes not idle: see $DIR/log/"; }
  sinfo
}

cmd_stop() {
  [[ -f $CONF ]] || { echo "slurm_cluster: nothing to stop in $DIR" >&2; return 0; }
  # Cancel this cluster's jobs first so that no job step outlives its slurmd.
  if pid_alive "$DIR/slurmctld.litft-pid"; then
    local jobs
    jobs=$(squeue -h -o %i 2>/dev/null || true)
    if [[ -n $jobs ]]; then
      # shellcheck disable=SC2086
      scancel $jobs 2>/dev/null || true
      wait_for 30 "jobs ended" no_jobs || true
    fi
  fi
  local name pid
  for name in slurmd-n1 slurmd-n2 slurmctld munged; do
    local pf=$DIR/$name.litft-pid
    [[ -s $pf ]] || continue
    pid=$(cat "$pf")
    if kill -0 "$pid" 2>/dev/null; then
      kill -TERM "$pid" 2>/dev/null || true
      for _ in $(seq 1 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
      if kill -0 "$pid" 2>/dev/null; then kill -KILL "$pid" 2>/dev/null || true; fi
      echo "slurm_cluster: stopped $name (pid $pid)" >&2
    fi
    rm -f "$pf"
  done
}

cmd_status() {
  local name rc=0
  for name in munged slurmctld slurmd-n1 slurmd-n2; do
    if pid_alive "$DIR/$name.litft-pid"; then
      echo "$name: running (pid $(cat "$DIR/$name.litft-pid"))"
    else
      echo "$name: not running"; rc=1
    fi
  done
  [[ $rc -eq 0 ]] && sinfo
  return $rc
}

case ${1:-} in
  start) cmd_start ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  env) echo "export SLURM_CONF=$CONF" ;;
  *) die "usage: $0 start|stop|status|env" ;;
esac
