#!/usr/bin/env bash
# Kubernetes restore speed: the Kubernetes form of the sandbox (a real kube-apiserver and etcd,
# the exec node of hack/kubenode whose container runtime runs exec'd commands on this machine,
# a real PostgreSQL and Redis) with BENCH_EVENTS generated events and BENCH_DEVICES devices,
# backed up once with flightctl_backup, then side by side:
#   1. psql -f of the archive's dump through one pods/exec into an empty database  (the floor)
#   2. flightctl_restore, deployment_type kubernetes, db_load_connections 1: one psql exec
#      reading the dump, device preparation whole while the Deployments are at 0
#   3. flightctl_restore with the default number of sessions (db_load_connections 0, or
#      BENCH_SESSIONS): the parallel loader, one psql exec stream per session, and the
#      database part of device preparation on the temporary database before the scale-down
# Each restore is the whole run (checksum, verification, load into the temporary database,
# scale to 0, swap, Secrets, device preparation through port-forwards, scale back,
# finalise), forced over the same archive every time. Wall times from hyperfine (BENCH_RUNS
# runs each, after one warm-up); the downtime is read from the module's log: from the first
# "Deployment scaled to 0" to the last "Deployment scaled back" of each run. The sessions and
# where the device rows were prepared come from the module's result (database_load).
#
# The exec node runs the pod's commands on this machine, so the database, psql and the
# module share its CPUs: on a loaded or 2-core machine the sessions compete with the API
# server and the exec streams. The load averages are printed beside every result.
#
# Usage: bench/kubernetes/restore.sh   (BENCH_EVENTS=rows, BENCH_DEVICES=n, BENCH_RUNS=n,
#        BENCH_SESSIONS=n, BENCH_DIR=parent dir)
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
EVENTS=${BENCH_EVENTS:-300000}
DEVICES=${BENCH_DEVICES:-10000}
RUNS=${BENCH_RUNS:-3}
SESSIONS=${BENCH_SESSIONS:-0}
GO=${GO:-/usr/local/go/bin/go}

for p in hyperfine /usr/bin/time psql kubectl python3 jq tar; do
	command -v "$p" >/dev/null || { echo "missing $p: install hyperfine, time, postgresql-client, kubectl, jq" >&2; exit 1; }
done
. "$ROOT/bench/lib/k8s-sandbox.sh"
k8s_sandbox k8s-restore "$DEVICES" "$EVENTS"
NS=$(jq -r .kubernetes.namespace "$ST")
INS=$(jq -r .kubernetes.internal_namespace "$ST")
DBPOD=$(jq -r .kubernetes.db_pod "$ST")
SQL="psql -X -q -v ON_ERROR_STOP=1 -h $SOCK -p $PORT -U postgres"
NDEV=$(psql -X -At -h "$SOCK" -p "$PORT" -U postgres -d flightctl -c "select count(*) from devices")
echo "== $NDEV devices" >&2

echo "== building flightctl_backup and flightctl_restore" >&2
for m in flightctl_backup flightctl_restore; do
	(cd "$ROOT" && CGO_ENABLED=0 "$GO" build -trimpath -o "$WORK/$m" "./modules/$m")
done
mkdir -p "$WORK/out" "$WORK/state"
# pg_dump in the pod reaches the sandbox's server on its loopback port; the restore's psql
# uses the pod's socket, and device preparation the port-forward to the pod's 5432.
cat >"$WORK/backup.json" <<EOF
{"output_dir": "$WORK/out", "deployment_type": "kubernetes", "kubeconfig": "$KUBECONFIG_PATH",
 "namespace": "$NS", "internal_namespace": "$INS", "db_port": $PORT}
EOF
"$WORK/flightctl_backup" "$WORK/backup.json" >"$WORK/backup-result.json" || { cat "$WORK/backup-result.json" >&2; exit 1; }
ARCHIVE=$(jq -r .archive "$WORK/backup-result.json")
[ -f "$ARCHIVE" ] || { cat "$WORK/backup-result.json" >&2; exit 1; }
# The floor loads exactly the dump the restores load.
tar -xzf "$ARCHIVE" -O db/dump.sql >"$WORK/dump.sql"
DUMPSIZE=$(stat -c %s "$WORK/dump.sql")
echo "== archive $(stat -c %s "$ARCHIVE") bytes, dump $DUMPSIZE bytes" >&2

for n in 1 "$SESSIONS"; do
	cat >"$WORK/args-restore-$n.json" <<EOF
{"path": "$ARCHIVE", "deployment_type": "kubernetes", "kubeconfig": "$KUBECONFIG_PATH",
 "namespace": "$NS", "internal_namespace": "$INS", "state_dir": "$WORK/state", "force": true,
 "db_load_connections": $n, "_ansible_verbosity": 1}
EOF
done

. "$ROOT/bench/lib/hyperfine.sh"

LOAD0=$(cut -d' ' -f1-3 /proc/loadavg)
echo "== $(nproc) CPUs, load $LOAD0" >&2
: >"$WORK/order"
timed floor "psql -f of the dump through one pods/exec into an empty database" "$RUNS" 1 \
	"$SQL -d postgres -c 'DROP DATABASE IF EXISTS bench_floor' -c 'CREATE DATABASE bench_floor TEMPLATE template0' >/dev/null" \
	"kubectl --kubeconfig $KUBECONFIG_PATH exec -i -n $INS $DBPOD -- psql -X -q -v ON_ERROR_STOP=1 -U postgres -d bench_floor -f - <$WORK/dump.sql >/dev/null 2>>$WORK/floor.log" "$WORK/floor.log"
for n in 1 "$SESSIONS"; do
	label="flightctl_restore, db_load_connections $n"
	[ "$n" = 0 ] && label="flightctl_restore, db_load_connections 0 (the default)"
	timed "restore-$n" "$label" "$RUNS" 1 true "$WORK/flightctl_restore $WORK/args-restore-$n.json >$WORK/result-$n.json 2>>$WORK/restore-$n.log" "$WORK/restore-$n.log"
	jq -e '.changed == true and (.failed | not)' "$WORK/result-$n.json" >/dev/null || { cat "$WORK/result-$n.json" >&2; tail -n 30 "$WORK/restore-$n.log" >&2; exit 1; }
	jq -c '.database_load // {}' "$WORK/result-$n.json" >"$WORK/restore-$n.dbload.json"
done
$SQL -d postgres -c "DROP DATABASE IF EXISTS bench_floor" >/dev/null

python3 - "$WORK" "$DBSIZE" "$DUMPSIZE" "$NDEV" "$(nproc)" "$LOAD0" <<'PY'
import json, os, re, sys
from datetime import datetime

work, dbsize, dumpsize, ndev, cpus, load0 = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5], sys.argv[6]
ids = open(os.path.join(work, "order")).read().split()
res = {i: json.load(open(os.path.join(work, i + ".json")))["results"][0] for i in ids}
floor = res["floor"]["mean"]
time_re = re.compile(r'^time=(\S+) .*msg="([^"]*)"')

def when(s):
    return datetime.fromisoformat(s.replace("Z", "+00:00"))

def runs_of(log):
    """Per timed run (the warm-up dropped): the downtime, and whether the device rows were
    prepared before the first Deployment was scaled to 0."""
    sections, cur = [], None
    for line in open(log, errors="replace"):
        if line.startswith("== run"):
            cur = []
            sections.append(cur)
            continue
        m = time_re.match(line)
        if m and cur is not None:
            cur.append((when(m.group(1)), m.group(2)))
    out = []
    for sec in sections[1:]:
        down = [t for t, msg in sec if msg == "Deployment scaled to 0"]
        up = [t for t, msg in sec if msg == "Deployment scaled back"]
        early = [t for t, msg in sec if msg == "database prepared in the temporary database"]
        if not down or not up:
            out.append((None, False))
            continue
        out.append(((max(up) - min(down)).total_seconds(), bool(early) and min(early) < min(down)))
    return out

print(f"database {dbsize / 1e6:.0f} MB (pg_database_size), plain dump {dumpsize / 1e6:.0f} MB, {ndev} devices; {cpus} CPUs, load average {load0} at the start")
print()
print("| what | runs | mean wall [s] | min … max [s] | × psql -f | downtime [s] mean (min … max) | sessions | device rows prepared | peak RSS [MiB] | load avg before → after |")
print("|:---|---:|---:|---:|---:|---:|---:|:---|---:|:---|")
for i in ids:
    r = res[i]
    rss = max(int(x) for x in open(os.path.join(work, i + ".rss")).read().split()) / 1024
    load = open(os.path.join(work, i + ".load")).read().strip().split("\n")
    sd = r["stddev"] or 0.0
    down, sessions, prep = "–", "1", "–"
    if i != "floor":
        runs = runs_of(os.path.join(work, i + ".log"))
        d = [x for x, _ in runs if x is not None]
        if d:
            down = f"{sum(d) / len(d):.2f} ({min(d):.2f} … {max(d):.2f})"
        info = json.load(open(os.path.join(work, i + ".dbload.json")))
        sessions = str(info.get("sessions", "?"))
        where = info.get("device_preparation_database", "?")
        early = bool(runs) and all(e for _, e in runs)
        prep = {"temporary_database": "before the scale-down", "downtime": "at 0 replicas"}.get(where, where)
        if where == "temporary_database" and not early:
            prep += " (log order not seen)"
    print(f"| {r['command']} | {len(r['times'])} | {r['mean']:.2f} ± {sd:.2f} | {r['min']:.2f} … {r['max']:.2f} | "
          f"{r['mean'] / floor:.2f} | {down} | {sessions} | {prep} | {rss:.0f} | {load[0]} → {load[-1]} |")
PY
