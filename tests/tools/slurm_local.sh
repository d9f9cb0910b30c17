#!/usr/bin/env bash
# Single-node SLURM for CI. Usage: slurm-ci.sh start|stop|run SCRIPT [sbatch args...]
# Copied from the team tool shared/tools/slurm-local.sh so that a clean clone (CI) has it; keep in step.
set -euo pipefail
BASE=${SLURM_CI_DIR:-/tmp/slurm}
export SLURM_CONF=$BASE/slurm.conf

_alive() { # true if PID exists and is not a zombie
  [ -r /proc/$1/stat ] && [ "$(awk '{print $3}' /proc/$1/stat)" != Z ]
}
_stop_pid() { # _stop_pid PIDFILE
  [ -s "$1" ] || return 0
  local p; p=$(cat "$1")
  kill -TERM "$p" 2>/dev/null || true
  for _ in $(seq 1 100); do _alive "$p" || break; sleep 0.1; done
  _alive "$p" && kill -KILL "$p" 2>/dev/null || true
  rm -f "$1"
}

start() {
  rm -rf "$BASE/state" "$BASE/spool" "$BASE/log" "$BASE/run"   # fresh cluster: no old jobs, ids from 1
  mkdir -p "$BASE"/{state,spool/slurmd,log,run}
  local node
  node=$(slurmd -C | head -n1 | sed 's/^NodeName=[^ ]*/NodeName=localhost NodeAddr=127.0.0.1/')
  cat > "$SLURM_CONF" <<CONF
ClusterName=ci
SlurmctldHost=localhost
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
ReturnToService=2
MailProg=/bin/true
SlurmctldPort=6817
SlurmdPort=6818
SlurmctldPidFile=$BASE/run/slurmctld.pid
SlurmdPidFile=$BASE/run/slurmd.pid
StateSaveLocation=$BASE/state
SlurmdSpoolDir=$BASE/spool/slurmd
SlurmctldLogFile=$BASE/log/slurmctld.log
SlurmdLogFile=$BASE/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0
DependencyParameters=kill_invalid_depend
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
JobCompType=jobcomp/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
InactiveLimit=0
KillWait=5
MinJobAge=300
SlurmctldTimeout=120
SlurmdTimeout=300
Waittime=0
$node State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE DefaultTime=00:10:00 State=UP
CONF
  # munge (started only if not already answering)
  if ! munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; then
    install -d -o munge -g munge -m 0755 /run/munge
    [ -s /etc/munge/munge.key ] || mungekey --create   # Debian postinst normally creates it
    runuser -u munge -- /usr/sbin/munged
    cp /run/munge/munged.pid "$BASE/run/munged.pid"     # we own it -> we stop it
  fi
  /usr/sbin/slurmctld -f "$SLURM_CONF"
  /usr/sbin/slurmd -f "$SLURM_CONF" -N localhost
  for _ in $(seq 1 300); do
    [ "$(sinfo -h -n localhost -o %t 2>/dev/null)" = idle ] && break
    sleep 0.1
  done
  # warm-up: first scheduling pass after start comes ~2 s late; also proves munge+slurmd+srun work
  if ! SWAIT_TIMEOUT=60 swait -o /dev/null -J warmup --wrap 'srun true' >/dev/null; then
    echo "slurm did not come up" >&2; tail -n 20 "$BASE"/log/*.log >&2; return 1
  fi
}

stop() {
  # cancel jobs first: slurmstepd and job processes survive a slurmd shutdown
  if [ -s "$BASE/run/slurmctld.pid" ] && _alive "$(cat "$BASE/run/slurmctld.pid")"; then
    scancel -p debug 2>/dev/null || true
    for _ in $(seq 1 150); do [ -z "$(squeue -h -o %i 2>/dev/null)" ] && break; sleep 0.2; done
  fi
  _stop_pid "$BASE/run/slurmd.pid"
  _stop_pid "$BASE/run/slurmctld.pid"
  _stop_pid "$BASE/run/munged.pid"
}

# Submit and poll every 0.5 s (sbatch --wait polls at 2 s, then 8 s, then 32 s).
# Exit 0 iff every job/array task ends COMPLETED; prints the job id first.
swait() {
  local jid states end=$((SECONDS + ${SWAIT_TIMEOUT:-86400}))
  jid=$(sbatch --parsable "$@") || return 1
  jid=${jid%%;*}; echo "$jid"
  while :; do
    states=$(scontrol show job -o "$jid" | grep -oP 'JobState=\K\S+') || return 1
    grep -qvE '^(COMPLETED|FAILED|CANCELLED|TIMEOUT|NODE_FAIL|OUT_OF_MEMORY|BOOT_FAIL|DEADLINE|PREEMPTED)$' <<<"$states" || break
    [ $SECONDS -lt $end ] || { scancel "$jid"; echo "timeout waiting for $jid" >&2; return 124; }
    sleep 0.5
  done
  ! grep -qv '^COMPLETED$' <<<"$states"
}

case "${1:-}" in
  start) start ;;
  stop)  stop ;;
  run)   shift; sbatch --wait "$@" ;;   # exit status = job's (max over array tasks)
  swait) shift; swait "$@" ;;
  *) echo "usage: $0 start|stop|run|swait sbatch-args..." >&2; exit 2 ;;
esac
