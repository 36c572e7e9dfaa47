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

for p in hyperfine /usr/bin/time pg_dump psql python3 jq; do
	command -v "$p" >/dev/null || { echo "missing $p: install hyperfine, time, postgresql-client, jq" >&2; exit 1; }
done
. "$ROOT/bench/lib/k8s-sandbox.sh"
k8s_sandbox k8s 1000 "$EVENTS"
APP_PW=$(jq -r .db.password "$ST")

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
. "$ROOT/bench/lib/hyperfine.sh"

echo "== $(nproc) CPUs, load $(cut -d' ' -f1-3 /proc/loadavg)" >&2
: >"$WORK/order"
timed pgdump "pg_dump in the pod's environment > /dev/null" "$RUNS" 1 true "$DUMP > /dev/null"
sh -c "$DUMP" | wc -c >"$WORK/pgdump.size"
for proto in websocket spdy; do
	timed "$proto" "flightctl_backup through pods/exec ($proto)" "$RUNS" 1 "rm -f $WORK/out/*" \
		"$WORK/flightctl_backup $WORK/args-$proto.json > $WORK/result.json"
	grep -Eq '"changed": *true' "$WORK/result.json" || { cat "$WORK/result.json" >&2; exit 1; }
	(cd "$WORK/out" && sha256sum -c --quiet ./*.sha256)
	stat -c %s "$WORK"/out/*.tar.gz >"$WORK/$proto.size"
	rm -f "$WORK"/out/*
done

dump_table "$DBSIZE"
