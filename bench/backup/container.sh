#!/usr/bin/env bash
# Backup speed on the path a quadlet host takes: the database in its container
# (`db_access: container`, the default), on the sandbox estate (go run ./hack/sandbox).
#   1. `podman exec <db> pg_dump ... | wc -c`                      (the floor)
#   2. upstream's way: that dump into a staging file, then tar czf
#   3. flightctl_backup, container access, default level
#   4. (BENCH_BASELINE=<binary>) another flightctl_backup binary, for a before/after
# The commands run in rounds, one of each per round, so that every command sees the same
# load on a shared machine; the ratio to the floor is taken within each round. CPU is
# user+sys of the command and the children it waits for (/usr/bin/time: podman, pg_dump;
# not conmon, which podman detaches). The start-up work is the time from the module's
# start to the start of the dump's `podman exec`, from a podman wrapper on PATH that logs
# every call. Prints a Markdown table on stdout.
#
# Usage: bench/backup/container.sh   (SANDBOX_DIR=an existing sandbox, else one is started
#        with BENCH_DEVICES devices and grown by BENCH_EVENTS events; BENCH_RUNS rounds;
#        BENCH_UPSTREAM=0 leaves upstream's way out; BENCH_DIR parent of the work directory)
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
GO=${GO:-/usr/local/go/bin/go}
RUNS=${BENCH_RUNS:-3}
DEVICES=${BENCH_DEVICES:-20000}
EVENTS=${BENCH_EVENTS:-700000}
ORG=00000000-0000-0000-0000-000000000000

for p in /usr/bin/time podman psql tar wc python3 bc; do
	command -v "$p" >/dev/null || { echo "missing $p: run scripts/install-deps.sh" >&2; exit 1; }
done

WORK=$(mktemp -d "${BENCH_DIR:-/var/tmp}/flightctl-dr-bench-container.XXXXXX")
SB=${SANDBOX_DIR:-}
started=""
cleanup() {
	if [ -n "$started" ]; then (cd "$ROOT" && "$GO" run ./hack/sandbox down --dir "$SB" >/dev/null 2>&1) || true; fi
	rm -rf "$WORK"
}
trap cleanup EXIT

if [ -z "$SB" ]; then
	SB=$WORK/sandbox
	echo "== sandbox with $DEVICES devices in $SB" >&2
	(cd "$ROOT" && "$GO" run ./hack/sandbox up --dir "$SB" --devices "$DEVICES" --prefix "bench$$-" >&2)
	started=1
fi
# shellcheck disable=SC1091
. "$SB/sandbox.env"
DB=$FLIGHTCTL_DR_DB_CONTAINER
psql_admin() {
	PGPASSWORD=$FLIGHTCTL_DR_DB_ADMIN_PASSWORD psql -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$FLIGHTCTL_DR_DB_PORT" -U "$FLIGHTCTL_DR_DB_ADMIN_USER" -d "$FLIGHTCTL_DR_DB_NAME" "$@"
}
if [ -n "$started" ] && [ "$EVENTS" -gt 0 ]; then
	echo "== generating $EVENTS events" >&2
	psql_admin >/dev/null <<EOF
INSERT INTO events (org_id, name, reason, type, message, details, involved_object_kind, involved_object_name, created_at)
  SELECT '$ORG', 'bench-event-' || i, 'DeviceUpdated', 'Normal', 'Device device-' || (i % $DEVICES) || ' was updated',
         jsonb_build_object('updatedFields', jsonb_build_array('status', 'spec'), 'blob',
           (SELECT string_agg(md5((i::bigint * 16 + j)::text), '') FROM generate_series(1, 16) j),
           'previous', (SELECT string_agg(md5((i::bigint * 7 + j)::text), ' ') FROM generate_series(1, 14) j)),
         'Device', 'device-' || (i % $DEVICES), now() - (i || ' seconds')::interval
  FROM generate_series(1, $EVENTS) i;
EOF
	# The container's /dev/shm is podman's 64 MB: no parallel vacuum workers.
	psql_admin -c "set max_parallel_maintenance_workers = 0" -c "VACUUM ANALYZE" >/dev/null
fi
DBSIZE=$(psql_admin -At -c "select pg_database_size(current_database())")
DEVS=$(psql_admin -At -c "select count(*) from devices")
EVS=$(psql_admin -At -c "select count(*) from events")

echo "== building flightctl_backup" >&2
(cd "$ROOT" && CGO_ENABLED=0 "$GO" build -trimpath -o "$WORK/flightctl_backup" ./modules/flightctl_backup)
printf %s "$FLIGHTCTL_DR_DB_PASSWORD" >"$WORK/pw"
chmod 600 "$WORK/pw"
mkdir -p "$WORK/out" "$WORK/wrap"
cat >"$WORK/args.json" <<EOF
{"output_dir": "$WORK/out", "deployment_type": "podman", "db_access": "container", "db_container": "$DB",
 "db_password_secret": "${SANDBOX_DB_USER_SECRET:-${FLIGHTCTL_DR_DB_USER_SECRET:-}}", "api_container": "$FLIGHTCTL_DR_API_CONTAINER",
 "pki_dir": "$FLIGHTCTL_DR_PKI_DIR", "encryption_dir": "$FLIGHTCTL_DR_ENCRYPTION_DIR", "config_file": "$FLIGHTCTL_DR_CONFIG_FILE",
 "pam_volume": "$FLIGHTCTL_DR_PAM_VOLUME", "systemd_scope": "user", "systemd_bus_address": "$FLIGHTCTL_DR_SYSTEMD_BUS_ADDRESS"}
EOF
PODMAN=$(command -v podman)
cat >"$WORK/wrap/podman" <<EOF
#!/bin/sh
ts=\$(date +%s.%N)
line=\$(printf '%s' "\$*" | tr '\n' ' ' | cut -c1-4000)
# One write per call: calls made side by side do not mix their lines.
printf '%s %s\n' "\$ts" "\$line" >>"$WORK/wrap/log"
exec $PODMAN "\$@"
EOF
chmod +x "$WORK/wrap/podman"
DUMP="pg_dump --clean --if-exists -h 127.0.0.1 -p 5432 -U flightctl_app -d $FLIGHTCTL_DR_DB_NAME"

# run ID CMD: one timed run; appends "wall user sys" to ID.times and the start-up delay
# (module start to the dump's podman exec) to ID.startup.
run() {
	local id=$1 cmd=$2
	rm -rf "$WORK/out"/* "$WORK/staging" "$WORK/upstream.tar.gz" "$WORK/wrap/log"
	mkdir -p "$WORK/staging/db"
	local t0
	t0=$(date +%s.%N)
	PATH=$WORK/wrap:$PATH /usr/bin/time -f "%e %U %S" -a -o "$WORK/$id.times" sh -c "$cmd" >"$WORK/$id.out" 2>"$WORK/$id.err" || {
		cat "$WORK/$id.err" "$WORK/$id.out" >&2
		exit 1
	}
	awk -v t0="$t0" 'index($0, "exec -i") && index($0, "pg_dump --clean") && !index($0, "pg_dump --version") { printf "%.3f\n", $1 - t0; exit }' "$WORK/wrap/log" >>"$WORK/$id.startup"
	case $id in
	backup | baseline)
		grep -Eq '"changed": *true' "$WORK/$id.out" || { cat "$WORK/$id.out" >&2; exit 1; }
		(cd "$WORK/out" && sha256sum -c --quiet ./*.sha256)
		stat -c %s "$WORK"/out/*.tar.gz >"$WORK/$id.size"
		grep -c . "$WORK/wrap/log" >"$WORK/$id.calls"
		;;
	floor) tr -d ' \n' <"$WORK/$id.out" >"$WORK/$id.size" ;;
	upstream) stat -c %s "$WORK/upstream.tar.gz" >"$WORK/$id.size" ;;
	esac
}

ids="floor backup"
[ "${BENCH_UPSTREAM:-1}" = 1 ] && ids="floor upstream backup"
[ -n "${BENCH_BASELINE:-}" ] && ids="$ids baseline"
echo "== $(nproc) CPUs, load before: $(cut -d' ' -f1-3 /proc/loadavg); $RUNS rounds of: $ids" >&2
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
# One untimed dump warms the page cache.
podman exec -i "$DB" sh -c "PGPASSWORD=\$(cat -) $DUMP" <"$WORK/pw" >/dev/null
for i in $(seq "$RUNS"); do
	for id in $ids; do
		case $id in
		floor) run floor "podman exec -i $DB sh -c 'PGPASSWORD=\$(cat -) $DUMP' < $WORK/pw | wc -c" ;;
		upstream) run upstream "podman exec -i $DB sh -c 'PGPASSWORD=\$(cat -) $DUMP' < $WORK/pw > $WORK/staging/db/dump.sql && tar czf $WORK/upstream.tar.gz -C $WORK/staging ." ;;
		backup) run backup "$WORK/flightctl_backup $WORK/args.json" ;;
		baseline) run baseline "$BENCH_BASELINE $WORK/args.json" ;;
		esac
	done
	echo "   round $i done, load $(cut -d' ' -f1-3 /proc/loadavg)" >&2
done
LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)

# shellcheck disable=SC2086 # one argument per command id
python3 - "$WORK" "$DBSIZE" "$DEVS" "$EVS" "$LOAD_BEFORE" "$LOAD_AFTER" $ids <<'PY'
import os, statistics, sys
work, dbsize, devs, evs, lb, la = sys.argv[1:7]
ids = sys.argv[7:]
def rows(i):
    return [tuple(float(x) for x in l.split()) for l in open(os.path.join(work, i + ".times")) if l.strip() and not l.startswith("Command")]
t = {i: rows(i) for i in ids}
floor = [r[0] for r in t["floor"]]
labels = {"floor": "`podman exec` pg_dump \\| wc -c (the floor)", "upstream": "upstream's way: that dump to a staging file, then `tar czf`",
          "backup": "**flightctl_backup**, container access, default level", "baseline": "flightctl_backup, BENCH_BASELINE binary"}
size = lambda i: int(open(os.path.join(work, i + ".size")).read().split()[0])
print(f"database {int(dbsize) / 1e6:.0f} MB (pg_database_size; {int(devs):,} devices, {int(evs):,} events), plain dump {size('floor') / 1e6:.0f} MB; "
      f"load average {lb} before, {la} after; {len(floor)} rounds")
print()
print("| what | wall mean [s] | min … max [s] | × floor (per round: median, range) | CPU user+sys [s] | before the dump's exec [s] | podman calls | output [MB] |")
print("|:---|---:|---:|---:|---:|---:|---:|---:|")
for i in ids:
    w = [r[0] for r in t[i]]
    cpu = statistics.mean(r[1] + r[2] for r in t[i])
    ratio = [a / b for a, b in zip(w, floor)]
    st = os.path.join(work, i + ".startup")
    start = [float(x) for x in open(st).read().split()] if os.path.exists(st) and i in ("backup", "baseline") else []
    calls = open(os.path.join(work, i + ".calls")).read().strip() if i in ("backup", "baseline") else "1"
    print(f"| {labels[i]} | {statistics.mean(w):.2f} | {min(w):.2f} … {max(w):.2f} | {statistics.median(ratio):.2f} ({min(ratio):.2f} … {max(ratio):.2f}) | "
          f"{cpu:.2f} | {('%.3f' % statistics.median(start)) if start else '—'} | {calls} | {size(i) / 1e6:.0f} |")
PY
