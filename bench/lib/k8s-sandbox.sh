# shellcheck shell=bash
# Sourced by the Kubernetes benchmarks (needs ROOT and GO).

# k8s_sandbox NAME DEVICES EVENTS: a new WORK directory (flightctl-dr-bench-NAME.* under
# BENCH_DIR, removed with the sandbox on exit), the Kubernetes form of the sandbox in
# $WORK/sb with DEVICES devices, grown by EVENTS generated events; sets ST (its state file),
# PORT, SOCK, KUBECONFIG_PATH and DBSIZE (pg_database_size in bytes).
# shellcheck disable=SC2034 # ST, PORT, SOCK, KUBECONFIG_PATH and DBSIZE are for the caller
k8s_sandbox() {
	local name=$1 devices=$2 events=$3 org=00000000-0000-0000-0000-000000000000
	bash "$ROOT/scripts/k8s-testbed.sh"
	WORK=$(mktemp -d "${BENCH_DIR:-/var/tmp}/flightctl-dr-bench-$name.XXXXXX")
	chmod 755 "$WORK"
	trap k8s_sandbox_cleanup EXIT

	echo "== sandbox (kubernetes form) in $WORK/sb" >&2
	(cd "$ROOT" && "$GO" run ./hack/sandbox up --kubernetes --dir "$WORK/sb" --devices "$devices" >&2)
	ST=$WORK/sb/sandbox.json
	PORT=$(jq -r .db.port "$ST")
	SOCK=$(jq -r .db.socket_dir "$ST")
	KUBECONFIG_PATH=$(jq -r .kubernetes.kubeconfig "$ST")

	echo "== generating $events events" >&2
	local start
	start=$(date +%s)
	psql -X -q -v ON_ERROR_STOP=1 -h "$SOCK" -p "$PORT" -U postgres -d flightctl >/dev/null <<SQL
INSERT INTO events (org_id, name, reason, type, message, details, involved_object_kind, involved_object_name, created_at)
  SELECT '$org', 'bench-event-' || i, 'DeviceUpdated', 'Normal', 'Device device-' || (i % 1000) || ' was updated',
         jsonb_build_object('updatedFields', jsonb_build_array('status', 'spec'), 'blob',
           (SELECT string_agg(md5((i::bigint * 16 + j)::text), '') FROM generate_series(1, 16) j),
           'previous', (SELECT string_agg(md5((i::bigint * 7 + j)::text), ' ') FROM generate_series(1, 14) j)),
         'Device', 'device-' || (i % 1000), now() - (i || ' seconds')::interval
  FROM generate_series(1, $events) i;
VACUUM ANALYZE;
SQL
	DBSIZE=$(psql -X -At -h "$SOCK" -p "$PORT" -U postgres -d flightctl -c "select pg_database_size('flightctl')")
	echo "== database: $DBSIZE bytes ($(($(date +%s) - start)) s to generate)" >&2
}

k8s_sandbox_cleanup() {
	(cd "$ROOT" && "$GO" run ./hack/sandbox down --dir "$WORK/sb" >/dev/null 2>&1) || true
	rm -rf "$WORK"
}
