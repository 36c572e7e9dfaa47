#!/usr/bin/env bash
# Kubernetes backup speed: the Kubernetes form of the sandbox (a real kube-apiserver and etcd,
# the exec node of hack/kubenode whose container runtime runs exec'd commands on this
# machine, a real PostgreSQL) with BENCH_EVENTS generated events, then
#   1. pg_dump alone in the database pod's environment, to /dev/null   (the floor)
#   2. flightctl_backup, deployment_type kubernetes: permission preflight, Secrets, and the
#      dump through pods/exec (WebSocket, and SPDY), checked against the byte count and
#      sha256 computed in the pod, compressed into the archive
# Wall times from hyperfine (BENCH_RUNS runs each); peak RSS of flightctl_backup from
# /usr/bin/time. The exec node runs the pod's commands on this machine, so "in the pod" and
# "on this machine" are the same process environment: the difference between 1 and 2 is the
# exec streaming through the API server, the checks and the archive.
#
# Usage: bench/kubernetes/run.sh   (BENCH_EVENTS=rows, BENCH_RUNS=n, BENCH_DIR=parent dir)
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
EVENTS=${BENCH_EVENTS:-300000}
RUNS=${BENCH_RUNS:-5}
GO=${GO:-/usr/local/go/bin/go}
ORG=00000000-0000-0000-0000-000000000000

for p in hyperfine /usr/bin/time pg_dump psql python3 jq; do
	command -v "$p" >/dev/null || { echo "missing $p: install hyperfine, time, postgresql-client, jq" >&2; exit 1; }
done
bash "$ROOT/scripts/k8s-testbed.sh"

WORK=$(mktemp -d "${BENCH_DIR:-/var/tmp}/flightctl-dr-bench-k8s.XXXXXX")
chmod 755 "$WORK"
cleanup() {
	(cd "$ROOT" && "$GO" run ./hack/sandbox down --dir "$WORK/sb" >/dev/null 2>&1) || true
	rm -rf "$WORK"
}
trap cleanup EXIT

echo "== sandbox (kubernetes form) in $WORK/sb" >&2
(cd "$ROOT" && "$GO" run ./hack/sandbox up --kubernetes --dir "$WORK/sb" --devices 1000 >&2)
ST=$WORK/sb/sandbox.json
PORT=$(jq -r .db.port "$ST")
SOCK=$(jq -r .db.socket_dir "$ST")
APP_PW=$(jq -r .db.password "$ST")
KUBECONFIG_PATH=$(jq -r .kubernetes.kubeconfig "$ST")

echo "== generating $EVENTS events" >&2
gen_start=$(date +%s)
psql -X -q -v ON_ERROR_STOP=1 -h "$SOCK" -p "$PORT" -U postgres -d flightctl >/dev/null <<EOF
INSERT INTO events (org_id, name, reason, type, message, details, involved_object_kind, involved_object_name, created_at)
  SELECT '$ORG', 'bench-event-' || i, 'DeviceUpdated', 'Normal', 'Device device-' || (i % 1000) || ' was updated',
         jsonb_build_object('updatedFields', jsonb_build_array('status', 'spec'), 'blob',
           (SELECT string_agg(md5((i::bigint * 16 + j)::text), '') FROM generate_series(1, 16) j),
           'previous', (SELECT string_agg(md5((i::bigint * 7 + j)::text), ' ') FROM generate_series(1, 14) j)),
         'Device', 'device-' || (i % 1000), now() - (i || ' seconds')::interval
  FROM generate_series(1, $EVENTS) i;
VACUUM ANALYZE;
EOF
DBSIZE=$(psql -X -At -h "$SOCK" -p "$PORT" -U postgres -d flightctl -c "select pg_database_size('flightctl')")
echo "== database: $DBSIZE bytes ($(($(date +%s) - gen_start)) s to generate)" >&2

echo "== building flightctl_backup" >&2
(cd "$ROOT" && CGO_ENABLED=0 "$GO" build -trimpath -o "$WORK/flightctl_backup" ./modules/flightctl_backup)
mkdir -p "$WORK/out"
for proto in websocket spdy; do
	cat >"$WORK/args-$proto.json" <<EOF
{"output_dir": "$WORK/out", "deployment_type": "kubernetes", "kubeconfig": "$KUBECONFIG_PATH",
 "namespace": "flightctl", "internal_namespace": "flightctl-internal", "db_port": $PORT, "exec_protocol": "$proto"}
EOF
done

DUMP="PGPASSWORD=$APP_PW pg_dump --clean --if-exists --no-password -h 127.0.0.1 -p $PORT -U flightctl_app -d flightctl"
bench() { # id label prepare cmd
	local id=$1 label=$2 prepare=$3 cmd=$4
	cut -d' ' -f1-3 /proc/loadavg >"$WORK/$id.load"
	: >"$WORK/$id.rss"
	hyperfine --style basic --runs "$RUNS" --warmup 1 --prepare "$prepare" \
		--export-json "$WORK/$id.json" -n "$label" \
		"/usr/bin/time -f %M -a -o $WORK/$id.rss sh -c '$cmd'" >&2
	cut -d' ' -f1-3 /proc/loadavg >>"$WORK/$id.load"
	echo "$id" >>"$WORK/order"
}

echo "== $(nproc) CPUs, load $(cut -d' ' -f1-3 /proc/loadavg)" >&2
: >"$WORK/order"
bench pgdump "pg_dump in the pod's environment > /dev/null" true "$DUMP > /dev/null"
sh -c "$DUMP" | wc -c >"$WORK/pgdump.size"
for proto in websocket spdy; do
	bench "$proto" "flightctl_backup through pods/exec ($proto)" "rm -f $WORK/out/*" \
		"$WORK/flightctl_backup $WORK/args-$proto.json > $WORK/result.json"
	grep -Eq '"changed": *true' "$WORK/result.json" || { cat "$WORK/result.json" >&2; exit 1; }
	(cd "$WORK/out" && sha256sum -c --quiet ./*.sha256)
	stat -c %s "$WORK"/out/*.tar.gz >"$WORK/$proto.size"
	rm -f "$WORK"/out/*
done

python3 - "$WORK" "$DBSIZE" <<'PY'
import json, os, sys
work, dbsize = sys.argv[1], int(sys.argv[2])
ids = open(os.path.join(work, "order")).read().split()
res = {i: json.load(open(os.path.join(work, i + ".json")))["results"][0] for i in ids}
floor = res["pgdump"]["mean"]
dump = int(open(os.path.join(work, "pgdump.size")).read())
print(f"database {dbsize / 1e6:.0f} MB (pg_database_size), plain dump {dump / 1e6:.0f} MB")
print()
print("| what | runs | mean wall [s] | min … max [s] | × pg_dump | peak RSS [MiB] | output [MB] | load avg before → after |")
print("|:---|---:|---:|---:|---:|---:|---:|:---|")
for i in ids:
    r = res[i]
    rss = max(int(x) for x in open(os.path.join(work, i + ".rss")).read().split()) / 1024
    size = int(open(os.path.join(work, i + ".size")).read()) / 1e6
    load = open(os.path.join(work, i + ".load")).read().strip().split("\n")
    sd = r["stddev"] or 0.0
    print(f"| {r['command']} | {len(r['times'])} | {r['mean']:.2f} ± {sd:.2f} | {r['min']:.2f} … {r['max']:.2f} | "
          f"{r['mean'] / floor:.2f} | {rss:.0f} | {size:.0f} | {load[0]} → {load[-1]} |")
PY
