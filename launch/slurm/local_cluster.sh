#!/usr/bin/env bash
# A single-node Slurm on this machine, for tests/test_slurm_real.py and for trying launch/slurm/rpt.sbatch by hand:
#
#   launch/slurm/local_cluster.sh start    # install (apt, only when sinfo is missing), configure, start; idempotent
#   launch/slurm/local_cluster.sh status   # exit 0 when sinfo answers
#   launch/slurm/local_cluster.sh stop     # stop the daemons this script started
#
# Why by hand: CI machines and containers have no systemd, so munged, slurmctld and slurmd are started directly.
# Needs root (it writes /etc/slurm/slurm.conf and runs the daemons as root). When sinfo already answers (a real
# cluster, or a previous start) `start` changes nothing; a slurm.conf this script did not write is never touched.
# The config is made for tests: `AuthInfo=cred_expire=5` shortens the hold on a requeued job from Slurm's default
# 121 s to 6 s, and a 1 s scheduler interval starts it as soon as that hold ends.
set -euo pipefail

STATE="${RPT_SLURM_DIR:-/var/tmp/rpt-slurm}"  # state, spool, logs and pid files of the daemons
CONF=/etc/slurm/slurm.conf
MARK="# written by rpt launch/slurm/local_cluster.sh"

say() { echo "local_cluster: $*" >&2; }

answers() { timeout 10 sinfo -h -o %t >/dev/null 2>&1; }

install() {
  command -v slurmctld >/dev/null && command -v munged >/dev/null && return 0
  command -v apt-get >/dev/null || { say "no slurmctld and no apt-get to install it"; return 1; }
  say "installing slurm-wlm and munge with apt"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q slurm-wlm munge >"$STATE/apt.log" 2>&1 ||
    { DEBIAN_FRONTEND=noninteractive apt-get update -q >>"$STATE/apt.log" 2>&1 &&
      DEBIAN_FRONTEND=noninteractive apt-get install -y -q slurm-wlm munge >>"$STATE/apt.log" 2>&1; } ||
    { say "apt-get failed (see $STATE/apt.log)"; return 1; }
}

start_munge() {
  if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then return 0; fi
  [[ -s /etc/munge/munge.key ]] || { mungekey --create 2>/dev/null || /usr/sbin/create-munge-key -f; }
  mkdir -p /run/munge /var/log/munge /var/lib/munge
  chown munge:munge /run/munge /var/log/munge /var/lib/munge /etc/munge/munge.key 2>/dev/null || true
  su -s /bin/sh munge -c /usr/sbin/munged
  for _ in $(seq 50); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && return 0; sleep 0.1; done
  say "munged did not start"
  return 1
}

write_conf() {
  if [[ -e "$CONF" ]] && ! grep -qF "$MARK" "$CONF"; then
    say "$CONF exists and was not written by this script: not touching it"
    return 1
  fi
  local host node
  host="$(hostname -s)"
  # slurmd -C: "NodeName=<host> CPUs=2 Boards=1 SocketsPerBoard=1 CoresPerSocket=2 ThreadsPerCore=1 RealMemory=N"
  node="$(slurmd -C | head -n 1)"
  mkdir -p "$STATE/state" "$STATE/spool" /etc/slurm
  cat >"$CONF" <<EOF
$MARK (single-node test cluster)
ClusterName=rpt-local
SlurmctldHost=${host}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=cred_expire=5
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1000
JobRequeue=1
ReturnToService=2
SchedulerParameters=sched_interval=1,bf_interval=1
MinJobAge=600
KillWait=10
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
JobAcctGatherType=jobacct_gather/none
MpiDefault=none
MailProg=/bin/true
StateSaveLocation=${STATE}/state
SlurmdSpoolDir=${STATE}/spool
SlurmctldPidFile=${STATE}/slurmctld.pid
SlurmdPidFile=${STATE}/slurmd.pid
SlurmctldLogFile=${STATE}/slurmctld.log
SlurmdLogFile=${STATE}/slurmd.log
${node}
PartitionName=debug Nodes=${host} Default=YES MaxTime=INFINITE State=UP
EOF
}

running() { [[ -s "$1" ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

start() {
  if answers; then say "sinfo answers: Slurm is up"; return 0; fi
  [[ $EUID -eq 0 ]] || { say "needs root to configure and start Slurm"; return 1; }
  mkdir -p "$STATE"
  install
  start_munge
  write_conf
  running "$STATE/slurmctld.pid" || slurmctld -c -i  # -c: a fresh start forgets old test jobs
  running "$STATE/slurmd.pid" || slurmd
  for _ in $(seq 100); do
    if [[ "$(timeout 5 sinfo -h -o %t 2>/dev/null)" == idle* ]]; then say "up: $(sinfo -h -o '%P %D %c %t')"; return 0; fi
    sleep 0.2
  done
  say "Slurm did not come up (logs in $STATE)"
  return 1
}

stop() {
  local daemon pid
  for daemon in slurmd slurmctld; do
    if running "$STATE/$daemon.pid"; then
      pid="$(cat "$STATE/$daemon.pid")"
      kill "$pid"
      for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    fi
  done
  say "stopped"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) answers ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
