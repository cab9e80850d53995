#!/usr/bin/env bash
# Real SLURM test of the proseflow SLURM profile (workflow/profiles/slurm) on this one machine.
#
#   ci/slurm/test_slurm.sh            (as root, Debian 12; `make test-slurm` calls it)
#
# What it does:
#   1. installs Debian's slurmctld, slurmd, slurm-client and munge (apt-get; skipped when present);
#   2. starts a PRIVATE one-node cluster under $PROSEFLOW_SLURM_CI_DIR (default /tmp/proseflow-slurm-ci):
#      its own munged (own key and socket), slurmctld and slurmd (own ports, default 16817/16818),
#      partitions `cpu` (default) and `gpu`, a fake GPU GRES (File=/dev/null) so `gpu: 1` jobs
#      are accepted, MinJobAge=300, no accounting. A system munge/slurm, if any, is not touched;
#   3. copies the checkout (tracked + untracked-not-ignored files, i.e. your working tree, no
#      results/) into two scratch folders: one runs the demo pipeline through SLURM with the profile,
#      the other runs the deterministic stages locally (sequences, structures; all stages with
#      PROSEFLOW_SLURM_FULL_LOCAL=1) as the reference;
#   4. compares the artefacts (ci/slurm/compare_results.py);
#   5. stops every daemon and job it started (trap on EXIT; also daemons left by a killed earlier
#      run, found by their pid files) and prints one summary line:  test_slurm: PASS|FAIL ...
#
# The profile is used as shipped except for the site placeholders: slurm_account is dropped and
# slurm_partition becomes `cpu` / `gpu` (GPU rules); status via squeue (no accounting here), a short
# first status check, --cores = this machine's CPUs (caps threads and group width).
#
# Environment knobs: PROSEFLOW_SLURM_CI_DIR, PROSEFLOW_SLURM_CI_PORT (slurmctld port; slurmd +1),
# PROSEFLOW_SLURM_TIMEOUT (s, whole snakemake run, default 1800), PROSEFLOW_SLURM_FULL_LOCAL=1,
# PROSEFLOW_SLURM_KEEP=1 (keep the scratch folders), VENV (default <repo>/.venv), CONFIGFILE
# (default configs/demo.yaml).
set -Eeuo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
VENV=${VENV:-$REPO/.venv}
RUNDIR=${PROSEFLOW_SLURM_CI_DIR:-/tmp/proseflow-slurm-ci}
PORT=${PROSEFLOW_SLURM_CI_PORT:-16817}
TIMEOUT=${PROSEFLOW_SLURM_TIMEOUT:-1800}
FULL_LOCAL=${PROSEFLOW_SLURM_FULL_LOCAL:-0}
KEEP=${PROSEFLOW_SLURM_KEEP:-0}
CONFIGFILE=${CONFIGFILE:-configs/demo.yaml}
PY="$VENV/bin/python"
SNAKEMAKE="$VENV/bin/snakemake"

T0=$(date +%s)
STATUS=FAIL
REASON="did not finish"
TIMINGS=""
STARTED_PIDS=()
now() { date +%s; }
log() { printf '[test_slurm %4ds] %s\n' "$(( $(now) - T0 ))" "$*"; }
fail() { REASON="$*"; log "FAIL: $*"; exit 1; }
stamp() { TIMINGS+=" $1=$(( $(now) - $2 ))s"; }

# --- stopping what we started ------------------------------------------------------------------
stop_pidfile() {  # stop the daemon whose pid file is $1, only if its command line names $RUNDIR
  local f=$1 pid
  [[ -s $f ]] || return 0
  pid=$(cat "$f" 2>/dev/null || true)
  [[ $pid =~ ^[0-9]+$ ]] || return 0
  if [[ -r /proc/$pid/cmdline ]] && tr '\0' ' ' </proc/"$pid"/cmdline | grep -qF "$RUNDIR"; then
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 50); do [[ -d /proc/$pid ]] || break; sleep 0.1; done
    [[ -d /proc/$pid ]] && kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$f"
}
stop_cluster() {
  if [[ -f $RUNDIR/etc/slurm.conf && -s $RUNDIR/pids/slurmctld.pid ]]; then
    # cancel whatever is still queued or running on our private cluster
    SLURM_CONF=$RUNDIR/etc/slurm.conf timeout 10 scancel --quiet --full \
      $(SLURM_CONF=$RUNDIR/etc/slurm.conf timeout 10 squeue -h -o %i 2>/dev/null) 2>/dev/null || true
  fi
  stop_pidfile "$RUNDIR/pids/slurmd.pid"
  stop_pidfile "$RUNDIR/pids/slurmctld.pid"
  stop_pidfile "$RUNDIR/munge/munged.pid"
}
cleanup() {
  local rc=$?
  set +e
  for pid in "${STARTED_PIDS[@]}"; do  # snakemake processes of this run (own process groups)
    [[ -d /proc/$pid ]] && { kill -INT -- "-$pid" 2>/dev/null; sleep 2; kill -KILL -- "-$pid" 2>/dev/null; }
  done
  stop_cluster
  if [[ $STATUS == PASS && $KEEP != 1 ]]; then
    rm -rf "$RUNDIR/work" "$RUNDIR/local"
  fi
  [[ $STATUS != PASS ]] && log "logs kept under $RUNDIR (snakemake: $RUNDIR/snakemake-slurm.log, daemons: $RUNDIR/log)"
  echo "test_slurm: $STATUS ($REASON) total=$(( $(now) - T0 ))s$TIMINGS"
  [[ $STATUS == PASS ]] && exit 0
  exit $(( rc == 0 ? 1 : rc ))
}
trap cleanup EXIT
trap 'REASON="interrupted"; exit 130' INT TERM

# --- 0. preconditions --------------------------------------------------------------------------
[[ $(id -u) == 0 ]] || fail "must run as root (installs packages, starts slurmd as root)"
[[ -x $SNAKEMAKE && -x $PY ]] || fail "no snakemake in $VENV (make venv first)"
"$PY" -c "import snakemake_executor_plugin_slurm" 2>/dev/null || fail "snakemake-executor-plugin-slurm not installed in $VENV"
command -v git >/dev/null || fail "git not found"

# --- 1. packages -------------------------------------------------------------------------------
t=$(now)
if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v sbatch >/dev/null \
   || ! command -v munged >/dev/null; then
  command -v apt-get >/dev/null || fail "slurm/munge missing and no apt-get (not Debian/Ubuntu)"
  log "installing slurmctld slurmd slurm-client munge (apt-get)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null || fail "apt-get update failed"
  apt-get install -y -qq --no-install-recommends slurmctld slurmd slurm-client munge >/dev/null \
    || fail "apt-get install slurmctld slurmd slurm-client munge failed"
fi
stamp install "$t"
log "slurm $(slurmctld -V 2>/dev/null | awk '{print $2}'), munge $(munged -V 2>&1 | awk '{print $1}' | head -1)"

# --- 2. private cluster ------------------------------------------------------------------------
t=$(now)
stop_cluster            # daemons left by an earlier, killed run
rm -rf "$RUNDIR"
mkdir -p "$RUNDIR"/{etc,state,spool,log,pids,munge,slurm-logs}
chmod 755 "$RUNDIR"

# munge: own key, socket, pid file (run as the munge user, as munged wants)
id munge >/dev/null 2>&1 || fail "no munge user (munge package broken?)"
dd if=/dev/urandom of="$RUNDIR/munge/munge.key" bs=1024 count=1 status=none
chown -R munge:munge "$RUNDIR/munge"
chmod 755 "$RUNDIR/munge"; chmod 400 "$RUNDIR/munge/munge.key"   # clients must reach the socket
SOCK=$RUNDIR/munge/munge.socket
runuser -u munge -- munged --socket="$SOCK" --key-file="$RUNDIR/munge/munge.key" \
  --pid-file="$RUNDIR/munge/munged.pid" --log-file="$RUNDIR/munge/munged.log" \
  --seed-file="$RUNDIR/munge/munged.seed" || fail "munged did not start (see $RUNDIR/munge/munged.log)"
for _ in $(seq 50); do [[ -S $SOCK ]] && break; sleep 0.1; done
munge -S "$SOCK" -n | unmunge -S "$SOCK" >/dev/null || fail "munge round trip failed"

HOST=$(hostname -s)
NCPU=$(nproc)
MEM_REAL=$(free -m | awk '/^Mem:/{print $2}')
# Memory is declared generously (not enforced here: no cgroups) so that the profile's per-rule
# requests are accepted as written; what the demo jobs really use is far less.
MEM_DECL=$(( MEM_REAL > 262144 ? MEM_REAL - 1024 : 262144 ))
CONF=$RUNDIR/etc/slurm.conf
cat >"$CONF" <<EOF
# private one-node cluster of ci/slurm/test_slurm.sh
ClusterName=proseflowci
SlurmctldHost=$HOST(127.0.0.1)
SlurmctldPort=$PORT
SlurmdPort=$(( PORT + 1 ))
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$SOCK
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SlurmdParameters=config_overrides
ReturnToService=2
MinJobAge=300
KillWait=5
SlurmctldTimeout=30
SlurmdTimeout=60
StateSaveLocation=$RUNDIR/state
SlurmdSpoolDir=$RUNDIR/spool/slurmd-%n
SlurmctldPidFile=$RUNDIR/pids/slurmctld.pid
SlurmdPidFile=$RUNDIR/pids/slurmd.pid
SlurmctldLogFile=$RUNDIR/log/slurmctld.log
SlurmdLogFile=$RUNDIR/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
GresTypes=gpu
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=$NCPU RealMemory=$MEM_DECL Gres=gpu:1 State=UNKNOWN
PartitionName=cpu Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
PartitionName=gpu Nodes=$HOST Default=NO MaxTime=INFINITE State=UP
EOF
echo "NodeName=$HOST Name=gpu File=/dev/null" >"$RUNDIR/etc/gres.conf"
export SLURM_CONF=$CONF
# snakemake-executor-plugin-slurm-jobstep (0.6.1) removes every SLURM_* variable but a few job ids
# from the environment of the `srun` it runs inside a job, SLURM_CONF included, so an srun there
# only finds a cluster whose slurm.conf is at the default path (/etc/slurm/slurm.conf, or configless).
# This private cluster's config is elsewhere: an `srun` wrapper first on PATH sets it back.
# (Real clusters keep slurm.conf at the default path and need nothing like this.)
mkdir -p "$RUNDIR/bin"
printf '#!/bin/sh\nSLURM_CONF=%q; export SLURM_CONF\nexec %q "$@"\n' "$CONF" "$(command -v srun)" >"$RUNDIR/bin/srun"
chmod +x "$RUNDIR/bin/srun"
export PATH=$RUNDIR/bin:$PATH

slurmctld -f "$CONF" || fail "slurmctld did not start (see $RUNDIR/log/slurmctld.log)"
for _ in $(seq 100); do scontrol ping >/dev/null 2>&1 && break; sleep 0.2; done
scontrol ping >/dev/null 2>&1 || fail "slurmctld does not answer (see $RUNDIR/log/slurmctld.log)"
slurmd -f "$CONF" || fail "slurmd did not start (see $RUNDIR/log/slurmd.log)"
state=""
for _ in $(seq 150); do
  state=$(sinfo -h -n "$HOST" -o %T 2>/dev/null | head -1)
  [[ $state == idle* ]] && break
  sleep 0.2
done
[[ $state == idle* ]] || fail "node $HOST not idle (state '$state'; see $RUNDIR/log/slurmd.log)"
stamp cluster "$t"
log "cluster up: node $HOST, $NCPU CPUs, partitions cpu (default) + gpu (fake GRES gpu:1)"

# --- 3. scratch copies of the checkout ---------------------------------------------------------
copy_checkout() {  # tracked and untracked-but-not-ignored files of the working tree
  mkdir -p "$1"
  (cd "$REPO" && git ls-files -z --cached --others --exclude-standard \
     | while IFS= read -r -d '' f; do [[ -f $f || -L $f ]] && printf '%s\0' "$f"; done \
     | tar --null -T - -cf -) | tar -xf - -C "$1"
}
WORK=$RUNDIR/work
LOCAL=$RUNDIR/local
copy_checkout "$WORK"
copy_checkout "$LOCAL"

# the profile as shipped, minus the site placeholders (see header)
PROFILE=$RUNDIR/profile
mkdir -p "$PROFILE"
"$PY" - "$WORK/workflow/profiles/slurm/config.yaml" "$PROFILE/config.yaml" <<'EOF' || fail "could not derive the test profile"
import sys, yaml
src, dst = sys.argv[1:]
p = yaml.safe_load(open(src))
p.get("default-resources", {}).pop("slurm_account", None)
p.setdefault("default-resources", {})["slurm_partition"] = "cpu"
for rule, res in (p.get("set-resources") or {}).items():
    res.pop("slurm_account", None)
    if "slurm_partition" in res:
        res["slurm_partition"] = "gpu" if (res.get("gpu") or "gpu" in str(res.get("gres", ""))) else "cpu"
yaml.safe_dump(p, open(dst, "w"), sort_keys=False)
EOF

# --- 4. local reference run --------------------------------------------------------------------
t=$(now)
UNTIL=(--until enumerate_sequences build_structure)
[[ $FULL_LOCAL == 1 ]] && UNTIL=()
log "local reference run (${UNTIL[*]:-all stages})"
(cd "$LOCAL" && "$SNAKEMAKE" --workflow-profile none --cores "$NCPU" --configfile "$CONFIGFILE" \
   "${UNTIL[@]}" </dev/null >"$RUNDIR/snakemake-local.log" 2>&1) \
  || fail "local reference run failed (see $RUNDIR/snakemake-local.log)"
stamp local "$t"

# --- 5. the SLURM run --------------------------------------------------------------------------
t=$(now)
log "snakemake --profile <slurm profile> --configfile $CONFIGFILE (timeout ${TIMEOUT}s)"
cd "$WORK"
set +e
setsid timeout --signal=INT --kill-after=60 "$TIMEOUT" \
  "$SNAKEMAKE" --profile "$PROFILE" --workflow-profile none --configfile "$CONFIGFILE" \
  --cores "$NCPU" --jobs 50 \
  --slurm-status-command squeue --slurm-init-seconds-before-status-checks 5 \
  --slurm-logdir "$RUNDIR/slurm-logs" --slurm-keep-successful-logs \
  </dev/null >"$RUNDIR/snakemake-slurm.log" 2>&1 &
SMK=$!
STARTED_PIDS+=("$SMK")
wait "$SMK"
rc=$?
set -e
STARTED_PIDS=()
stamp slurm "$t"
n_sub=$(grep -c "submitted with SLURM jobid" "$RUNDIR/snakemake-slurm.log" || true)
n_grp=$(grep -ci "group job" "$RUNDIR/snakemake-slurm.log" || true)
TIMINGS+=" sbatch_jobs=$n_sub"
if (( rc == 124 || rc == 137 )); then fail "SLURM run timed out after ${TIMEOUT}s"; fi
(( rc == 0 )) || { tail -40 "$RUNDIR/snakemake-slurm.log"; fail "SLURM run failed (rc=$rc; see $RUNDIR/snakemake-slurm.log)"; }
log "SLURM run done: $n_sub sbatch submissions ($n_grp group-job lines)"
grep -q "Nothing to be done" "$RUNDIR/snakemake-slurm.log" && fail "SLURM run did nothing"
(( n_sub > 0 )) || fail "no job went through sbatch"

# --- 6. compare --------------------------------------------------------------------------------
t=$(now)
"$PY" "$WORK/ci/slurm/compare_results.py" "$WORK" "$LOCAL" config.yaml "$CONFIGFILE" \
  || fail "SLURM artefacts differ from the local run's"
stamp compare "$t"
STATUS=PASS
REASON="demo pipeline through SLURM matches the local run"
