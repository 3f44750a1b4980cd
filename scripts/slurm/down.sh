#!/usr/bin/env bash
# Tear down the cluster that scripts/slurm/up.sh started: cancel its jobs, stop exactly the
# daemons whose pids up.sh recorded (slurmd, slurmctld, slurmdbd, MariaDB, munged).
set -uo pipefail
STATE=${SCWB_SLURM_STATE:-/var/tmp/scwb-slurm}
[ -d "$STATE" ] || { echo "slurm-down: nothing to stop ($STATE absent)" >&2; exit 0; }
scancel --full --quiet --user="$(id -un)" 2>/dev/null || true
for name in slurmd slurmctld slurmdbd mariadb munged; do
  f="$STATE/$name.pid"
  [ -f "$f" ] || continue
  pid=$(cat "$f")
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null
  fi
  rm -f "$f"
done
echo "slurm-down: stopped (state and logs kept in $STATE)" >&2
