#!/usr/bin/env bash
# A one-node SLURM cluster on localhost for tests and CI: munge + slurmctld + slurmd (Debian slurm-wlm).
#   tests/slurm/harness.sh install   apt-get the packages (root; idempotent)
#   tests/slurm/harness.sh start     write the config under $HPA_SLURM_DIR and start the daemons
#   tests/slurm/harness.sh stop      stop the daemons (leaves nothing running)
#   tests/slurm/harness.sh env       print `export SLURM_CONF=...` for clients (sbatch, squeue)
# Idempotent: start on a running cluster restarts it; stop on a stopped one does nothing.
# Accounting is off (no slurmdbd): jobs are recorded by jobcomp/filetxt in $HPA_SLURM_DIR/jobcomp.log,
# and Snakemake's executor must use `--slurm-status-command squeue` (MinJobAge keeps finished jobs
# visible to squeue long enough).
set -euo pipefail
DIR=${HPA_SLURM_DIR:-/tmp/hpa-batch-slurm}
CONF=$DIR/slurm.conf
HOST=$(hostname -s)

install() {
  if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v munged >/dev/null \
     && command -v sbatch >/dev/null; then
    return 0
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq slurmctld slurmd slurm-client munge >/dev/null
}

write_conf() {
  mkdir -p "$DIR"/{state,spool}
  cat > "$CONF" <<CONF
ClusterName=hpabatch
SlurmctldHost=$HOST
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/slurmctld.log
SlurmdLogFile=$DIR/slurmd.log
SlurmctldPort=${HPA_SLURMCTLD_PORT:-6817}
SlurmdPort=${HPA_SLURMD_PORT:-6818}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2
JobCompType=jobcomp/filetxt
JobCompLoc=$DIR/jobcomp.log
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
MinJobAge=86400
ReturnToService=2
MpiDefault=none
SlurmdParameters=config_overrides
KillWait=5
NodeName=$HOST CPUs=8 RealMemory=24000 State=UNKNOWN
PartitionName=cpu Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
PartitionName=gpu Nodes=ALL Default=NO MaxTime=INFINITE State=UP OverSubscribe=YES
CONF
  # job steps (srun inside a batch job) read the default location; SLURM_CONF is not always passed on
  mkdir -p /etc/slurm
  cp "$CONF" /etc/slurm/slurm.conf
}

start_munge() {
  if [ ! -s /etc/munge/munge.key ]; then
    mkdir -p /etc/munge
    dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null
  fi
  chown munge:munge /etc/munge/munge.key 2>/dev/null || true
  chmod 400 /etc/munge/munge.key
  mkdir -p /run/munge /var/lib/munge /var/log/munge
  chown munge:munge /run/munge /var/lib/munge /var/log/munge 2>/dev/null || true
  if ! pgrep -x munged >/dev/null; then
    if id munge >/dev/null 2>&1; then
      su -s /bin/sh munge -c "munged" || munged --force
    else
      munged --force
    fi
  fi
  for _ in $(seq 50); do munge -n >/dev/null 2>&1 && return 0; sleep 0.1; done
  echo "munge does not answer" >&2; return 1
}

stop() {
  for pidfile in "$DIR/slurmd.pid" "$DIR/slurmctld.pid"; do
    if [ -s "$pidfile" ]; then kill "$(cat "$pidfile")" 2>/dev/null || true; fi
  done
  pkill -x slurmd 2>/dev/null || true
  pkill -x slurmctld 2>/dev/null || true
  for _ in $(seq 50); do pgrep -x slurmd >/dev/null || pgrep -x slurmctld >/dev/null || break; sleep 0.1; done
  pkill -9 -x slurmd 2>/dev/null || true
  pkill -9 -x slurmctld 2>/dev/null || true
  pkill -9 -x slurmstepd 2>/dev/null || true
  pkill -x munged 2>/dev/null || true
  for _ in $(seq 50); do pgrep -x munged >/dev/null || break; sleep 0.1; done
  pkill -9 -x munged 2>/dev/null || true
  rm -f "$DIR"/*.pid
}

start() {
  install
  stop
  write_conf
  start_munge
  export SLURM_CONF=$CONF
  slurmctld -f "$CONF" -i
  slurmd -f "$CONF"
  for _ in $(seq 100); do
    if sinfo -h -o '%T' 2>/dev/null | grep -qE '^(idle|mixed|allocated)'; then
      echo "SLURM up: $(sinfo -h -o '%P %D %T' | tr '\n' ' ')"
      return 0
    fi
    sleep 0.2
  done
  echo "SLURM did not come up; logs:" >&2
  tail -20 "$DIR/slurmctld.log" "$DIR/slurmd.log" >&2 || true
  return 1
}

case "${1:-}" in
  install) install ;;
  start) start ;;
  stop) stop ;;
  env) echo "export SLURM_CONF=$CONF" ;;
  *) echo "usage: $0 install|start|stop|env" >&2; exit 2 ;;
esac
