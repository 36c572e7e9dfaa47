#!/usr/bin/env bash
# Backup speed on a database of about 1 GiB (flightctl schema, generated rows):
#   1. pg_dump alone to /dev/null              (the floor)
#   2. upstream's way: pg_dump to a staging file, then tar czf of the staging directory
#   3. flightctl_backup (this project), direct database access, at every gzip level in
#      BENCH_LEVELS with `compression: fixed` (archive size against time, for the choice of
#      the default level), then with `compression: adaptive` from level 2 (opt-in)
#   4. (BENCH_BASELINE=<binary>) another flightctl_backup binary, adaptive from level 2, for
#      a before/after
# Wall times from hyperfine (BENCH_RUNS runs each, one warm-up before the first command);
# peak RSS of every run from /usr/bin/time (the largest process of the command: pg_dump,
# tar or flightctl_backup). Everything runs on a private PostgreSQL 15 cluster on a free
# loopback port, stopped and removed at the end. Prints a Markdown table on stdout.
#
# Usage: bench/backup/run.sh   (BENCH_EVENTS=rows, BENCH_RUNS=n, BENCH_UPSTREAM_RUNS=n,
#                               BENCH_LEVELS="1 3 6", BENCH_BASELINE=binary, BENCH_DIR=parent dir)
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
FIXTURES=${FLIGHTCTL_DR_FIXTURES:-$ROOT/../shared/fixtures}
PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}
EVENTS=${BENCH_EVENTS:-560000}
DEVICES=${BENCH_DEVICES:-50000}
RUNS=${BENCH_RUNS:-5}
UPSTREAM_RUNS=${BENCH_UPSTREAM_RUNS:-3}
LEVELS=${BENCH_LEVELS:-1 2 3 4 5 6 9}
GO=${GO:-/usr/local/go/bin/go}
ORG=00000000-0000-0000-0000-000000000000
APP_PW=bench-app-pw

for p in "$PGBIN/initdb" "$PGBIN/pg_ctl" /usr/bin/time hyperfine pg_dump psql tar gzip python3; do
	command -v "$p" >/dev/null || { echo "missing $p: install postgresql, time and hyperfine" >&2; exit 1; }
done

WORK=$(mktemp -d "${BENCH_DIR:-/var/tmp}/flightctl-dr-bench-backup.XXXXXX")
chmod 755 "$WORK"
PGDATA=$WORK/pg
SOCK=$WORK/sock
mkdir -p "$PGDATA" "$SOCK" "$WORK/out" "$WORK/staging"
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')

as_pg() {
	if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}
if [ "$(id -u)" = 0 ]; then chown postgres "$PGDATA" "$SOCK"; fi

cleanup() {
	as_pg "$PGBIN/pg_ctl" -D "$PGDATA" -m fast -w stop >/dev/null 2>&1 || true
	rm -rf "$WORK"
}
trap cleanup EXIT

echo "== cluster on 127.0.0.1:$PORT in $WORK" >&2
as_pg "$PGBIN/initdb" -D "$PGDATA" -U postgres --auth=trust --no-sync >/dev/null
cat >"$PGDATA/pg_hba.conf" <<EOF
local all postgres trust
host all all 127.0.0.1/32 scram-sha-256
EOF
as_pg "$PGBIN/pg_ctl" -D "$PGDATA" -l "$PGDATA/server.log" -w \
	-o "-p $PORT -k $SOCK -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_wal_size=4GB" start >/dev/null

psql_su() { psql -X -q -v ON_ERROR_STOP=1 -h "$SOCK" -p "$PORT" -U postgres "$@"; }
psql_su -d postgres -f "$FIXTURES/flightctl-roles.sql" >/dev/null
psql_su -d postgres >/dev/null <<EOF
ALTER ROLE flightctl_app PASSWORD '$APP_PW';
CREATE DATABASE flightctl OWNER admin;
GRANT CONNECT ON DATABASE flightctl TO flightctl_app;
EOF
PGOPTIONS="-c client_min_messages=warning" psql_su -d flightctl -f "$FIXTURES/flightctl-schema.sql" >/dev/null

echo "== generating $EVENTS events and $DEVICES devices" >&2
gen_start=$(date +%s)
psql_su -d flightctl >/dev/null <<EOF
INSERT INTO organizations (id, display_name, external_id, created_at, updated_at) VALUES ('$ORG', 'Default', 'default', now(), now());
INSERT INTO devices (org_id, name, labels, annotations, generation, resource_version, created_at, status)
  SELECT '$ORG', 'device-' || i, jsonb_build_object('site', 'site-' || (i % 100)), '{}'::jsonb, 1, i, now(),
         jsonb_build_object('summary', jsonb_build_object('status', 'Online'), 'systemInfo',
           jsonb_build_object('bootID', md5(i::text), 'kernel', '5.14.0-' || (i % 50), 'hostname', 'host-' || i))
  FROM generate_series(1, $DEVICES) i;
INSERT INTO events (org_id, name, reason, type, message, details, involved_object_kind, involved_object_name, created_at)
  SELECT '$ORG', 'event-' || i, 'DeviceUpdated', 'Normal', 'Device device-' || (i % $DEVICES) || ' was updated',
         jsonb_build_object('updatedFields', jsonb_build_array('status', 'spec'), 'blob',
           (SELECT string_agg(md5((i::bigint * 16 + j)::text), '') FROM generate_series(1, 16) j),
           'previous', (SELECT string_agg(md5((i::bigint * 7 + j)::text), ' ') FROM generate_series(1, 14) j)),
         'Device', 'device-' || (i % $DEVICES), now() - (i || ' seconds')::interval
  FROM generate_series(1, $EVENTS) i;
VACUUM ANALYZE;
EOF
DBSIZE=$(psql_su -d flightctl -At -c "select pg_database_size('flightctl')")
echo "== database: $DBSIZE bytes ($(($(date +%s) - gen_start)) s to generate)" >&2

echo "== building flightctl_backup" >&2
(cd "$ROOT" && CGO_ENABLED=0 "$GO" build -trimpath -o "$WORK/flightctl_backup" ./modules/flightctl_backup)
mkdir -p "$WORK/pki" && echo cert >"$WORK/pki/ca.crt" && printf 'db:\n  name: flightctl\n' >"$WORK/service-config.yaml"

export PGPASSWORD=$APP_PW
DUMP="pg_dump --clean --if-exists --no-password -h 127.0.0.1 -p $PORT -U flightctl_app -d flightctl"

args() { # id level mode
	cat >"$WORK/args-$1.json" <<EOF
{"output_dir": "$WORK/out", "deployment_type": "podman", "server_version": "bench", "db_access": "direct",
 "db_host": "127.0.0.1", "db_port": $PORT, "db_password": "$APP_PW", "pki_dir": "$WORK/pki",
 "encryption_dir": "$WORK/none", "config_file": "$WORK/service-config.yaml", "pam_volume": "",
 "compression_level": $2, "compression": "$3"}
EOF
}

. "$ROOT/bench/lib/hyperfine.sh"

echo "== $(nproc) CPUs, load $(cut -d' ' -f1-3 /proc/loadavg)" >&2
: >"$WORK/order"
timed pgdump "pg_dump > /dev/null" "$RUNS" 1 true "$DUMP > /dev/null"
$DUMP | wc -c >"$WORK/pgdump.size"
timed upstream "upstream: pg_dump to a file, then tar czf" "$UPSTREAM_RUNS" 0 \
	"rm -rf $WORK/staging $WORK/upstream.tar.gz; mkdir -p $WORK/staging/db" \
	"$DUMP > $WORK/staging/db/dump.sql && tar czf $WORK/upstream.tar.gz -C $WORK/staging ."
stat -c %s "$WORK/upstream.tar.gz" >"$WORK/upstream.size"
rm -rf "$WORK/staging" "$WORK/upstream.tar.gz"
BIN=$WORK/flightctl_backup
rows="$LEVELS adaptive"
[ -n "${BENCH_BASELINE:-}" ] && rows="$rows baseline"
for level in $rows; do
	bin=$BIN
	if [ "$level" = adaptive ]; then
		id=adaptive label="flightctl_backup, compression: adaptive from level 2"
		args "$id" 2 adaptive
	elif [ "$level" = baseline ]; then
		id=baseline label="BENCH_BASELINE binary, compression: adaptive from level 2" bin=$BENCH_BASELINE
		args "$id" 2 adaptive
	else
		id=level$level label="flightctl_backup, level $level (fixed)"
		args "$id" "$level" fixed
	fi
	timed "$id" "$label" "$RUNS" 0 "rm -f $WORK/out/*" \
		"$bin $WORK/args-$id.json > $WORK/result.json"
	grep -Eq '"changed": *true' "$WORK/result.json" || { cat "$WORK/result.json" >&2; exit 1; }
	(cd "$WORK/out" && sha256sum -c --quiet ./*.sha256)
	stat -c %s "$WORK"/out/*.tar.gz >"$WORK/$id.size"
	rm -f "$WORK"/out/*
done
echo "== load after: $(cut -d' ' -f1-3 /proc/loadavg)" >&2

dump_table "$DBSIZE" user
