#!/usr/bin/env bash
# Bring up a real single-node SLURM cluster (controller, one compute node, accounting) on this
# machine: Debian 12, run as root, no systemd. Used by CI (.ci/run) before `make test` so that
# tests/test_slurm.py runs against a real scheduler; scripts/slurm/down.sh tears it down.
#
#   scripts/slurm/up.sh            # install (if needed), configure, start; waits until sinfo shows the node idle
#   SCWB_SLURM_STATE=/path ...     # where configs, logs, pid files and state live (default /var/tmp/scwb-slurm)
#
# Every daemon is started by hand in the background and its pid written to $STATE/*.pid, so
# down.sh stops exactly these processes. Pitfalls this avoids: without DefMemPerCPU one job takes
# all the node's memory and jobs run one at a time; SchedulerParameters removes a 3 s wait; sacct
# (and so submitit's job.state) needs accounting, hence MariaDB + slurmdbd; scontrol forgets ended
# jobs after MinJobAge; submitit ignores SIGTERM, so a cancel lives until KillWait (kept small).
set -euo pipefail

STATE=${SCWB_SLURM_STATE:-/var/tmp/scwb-slurm}
CONF=/etc/slurm
log() { echo "slurm-up: $*" >&2; }
t0=$(date +%s)

if [ "$(id -u)" != 0 ]; then
  log "needs root (installs packages, starts daemons)"; exit 1
fi
if sinfo -h -o %T 2>/dev/null | grep -qx idle && [ -f "$STATE/slurmctld.pid" ]; then
  log "already up"; exit 0
fi

if ! command -v slurmctld >/dev/null || ! command -v slurmdbd >/dev/null \
  || ! command -v munged >/dev/null || ! command -v mariadbd >/dev/null; then
  log "installing packages"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq --no-install-recommends \
    slurmctld slurmd slurm-client munge slurmdbd mariadb-server >/dev/null
fi

mkdir -p "$STATE"/{ctld,d,log} "$CONF"
HOST=$(hostname -s)
CPUS=$(nproc)
MEM_MB=$(awk '/MemTotal/ {print int($2 / 1024)}' /proc/meminfo)
REAL_MB=$((MEM_MB * 8 / 10))           # leave room for the OS
DEF_MEM=$((REAL_MB / CPUS / 4))        # a job takes a share, not the whole node
[ "$DEF_MEM" -lt 256 ] && DEF_MEM=256

alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

# --- munge: the authentication every daemon and client uses
mkdir -p /run/munge /var/log/munge /var/lib/munge
chown munge:munge /run/munge /var/log/munge /var/lib/munge
chmod 0755 /run/munge
if [ ! -s /etc/munge/munge.key ]; then
  (command -v mungekey >/dev/null && mungekey --create --force) \
    || dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none
  chown munge:munge /etc/munge/munge.key && chmod 0400 /etc/munge/munge.key
fi
if ! alive "$STATE/munged.pid"; then
  runuser -u munge -- /usr/sbin/munged --force
  for _ in $(seq 50); do [ -f /run/munge/munged.pid ] && break; sleep 0.1; done
  cp /run/munge/munged.pid "$STATE/munged.pid"
fi
munge -n | unmunge >/dev/null || { log "munge does not work"; exit 1; }

# --- MariaDB + slurmdbd: accounting, so that sacct knows every job's end state and reason
mkdir -p /run/mysqld && chown mysql:mysql /run/mysqld
if ! alive "$STATE/mariadb.pid"; then
  [ -d /var/lib/mysql/mysql ] || mariadb-install-db --user=mysql --datadir=/var/lib/mysql >/dev/null
  setsid mariadbd --user=mysql --datadir=/var/lib/mysql --socket=/run/mysqld/mysqld.sock \
    --pid-file=/run/mysqld/mariadbd.pid --skip-networking=0 --bind-address=127.0.0.1 \
    >"$STATE/log/mariadb.log" 2>&1 < /dev/null &
  echo $! >"$STATE/mariadb.pid"
  for _ in $(seq 100); do mariadb -e 'select 1' >/dev/null 2>&1 && break; sleep 0.2; done
fi
mariadb -e "CREATE DATABASE IF NOT EXISTS slurm_acct_db;
  CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'scwb-slurm';
  GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost'; FLUSH PRIVILEGES;"

cat >"$CONF/slurmdbd.conf" <<EOF
AuthType=auth/munge
DbdHost=localhost
DbdPort=6819
SlurmUser=root
LogFile=$STATE/log/slurmdbd.log
PidFile=$STATE/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StoragePass=scwb-slurm
StorageLoc=slurm_acct_db
EOF
chmod 600 "$CONF/slurmdbd.conf"

cat >"$CONF/slurm.conf" <<EOF
# written by scripts/slurm/up.sh: one node, accounting in slurmdbd
ClusterName=scwb
SlurmctldHost=$HOST
SlurmUser=root
AuthType=auth/munge
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/d
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SwitchType=switch/none
MpiDefault=none
ReturnToService=2
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0,sched_min_interval=0
MinJobAge=60
KillWait=2
InactiveLimit=0
Waittime=0
DefMemPerCPU=$DEF_MEM
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoreFlags=job_comment
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
NodeName=$HOST CPUs=$CPUS RealMemory=$REAL_MB State=UNKNOWN
PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
EOF

if ! alive "$STATE/slurmdbd.pid"; then
  setsid slurmdbd -D >>"$STATE/log/slurmdbd.out" 2>&1 < /dev/null &
  echo $! >"$STATE/slurmdbd.pid"
  for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/6819) 2>/dev/null && break; sleep 0.2; done
fi
if ! alive "$STATE/slurmctld.pid"; then
  setsid slurmctld -D -i >>"$STATE/log/slurmctld.out" 2>&1 < /dev/null &
  echo $! >"$STATE/slurmctld.pid"
fi
for _ in $(seq 100); do scontrol ping 2>/dev/null | grep -q UP && break; sleep 0.2; done
if ! alive "$STATE/slurmd.pid"; then
  setsid slurmd -D >>"$STATE/log/slurmd.out" 2>&1 < /dev/null &
  echo $! >"$STATE/slurmd.pid"
fi

for _ in $(seq 150); do
  st=$(sinfo -h -n "$HOST" -o %T 2>/dev/null || true)
  case "$st" in
    idle|mixed|allocated) break ;;
    down*|drain*) scontrol update nodename="$HOST" state=resume 2>/dev/null || true ;;
  esac
  sleep 0.2
done
st=$(sinfo -h -n "$HOST" -o %T 2>/dev/null || true)
if [ "$st" != idle ] && [ "$st" != mixed ] && [ "$st" != allocated ]; then
  log "the node did not come up (state '$st'); logs in $STATE/log"; exit 1
fi
# the cluster registers itself in slurmdbd on start; wait until sacct answers
for _ in $(seq 50); do sacct -n -X -S now-1minute >/dev/null 2>&1 && break; sleep 0.2; done
log "up in $(($(date +%s) - t0)) s: node $HOST ($CPUS CPUs, ${REAL_MB} MB, DefMemPerCPU=$DEF_MEM), state in $STATE"
