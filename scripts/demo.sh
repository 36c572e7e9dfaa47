#!/usr/bin/env bash
# The whole job on this machine: a sandbox Flight Control estate is backed up with
# dr-backup, destroyed (database dropped, PKI deleted, KV flushed) and brought back with
# dr-restore, both run by FQCN from the installed collection. Prints what was saved, what
# was restored, the device counts by status before and after, and the timings. The
# sandbox is stopped at the end, whatever happens.
#
# usage: scripts/demo.sh            (make demo)
#        ESTATE=kubernetes scripts/demo.sh   (make demo ESTATE=kubernetes: scripts/demo-kubernetes.sh)
set -euo pipefail
if [ "${ESTATE:-podman}" = kubernetes ]; then exec bash "$(dirname "$0")/demo-kubernetes.sh"; fi

repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
export PATH=/usr/local/go/bin:$PATH

work=$repo/build/demo
sandbox=$work/sandbox
backups=$work/backups
logs=$work/logs
# Container, secret and volume names get this prefix, so the demo can run beside another
# sandbox on the same machine.
prefix=${DEMO_PREFIX:-demo-}
# How the restore reaches the database: "container" (the default, upstream's way: psql
# inside the database container, device preparation at the port podman publishes) or
# "direct".
restore_db_access=${DEMO_RESTORE_DB_ACCESS:-container}

# shellcheck source=scripts/demo-common.sh
. "$repo/scripts/demo-common.sh"
demo_prepare

say "Starting a sandbox Flight Control estate"
t0=$(now)
"$repo/build/sandbox" up --dir "$sandbox" --prefix "$prefix" | sed 's/^/  /'
t1=$(now)
echo "  up in $(took "$t0" "$t1")"

# shellcheck disable=SC1091
. "$sandbox/sandbox.env"
# status exits non-zero while something is down; its JSON says what.
status() { "$repo/build/sandbox" status --dir "$sandbox" 2>/dev/null || true; }
counts() { jq -r '(.devices_by_status // {}) | to_entries | map("\(.key)=\(.value)") | join(", ")'; }
before=$(status)
echo "  devices by status: $(counts <<<"$before")"
echo "  KV keys: $(jq .kv_keys <<<"$before"); units: $(jq -r '.units | to_entries | map(select(.value == "active")) | length' <<<"$before") active"

say "Backup: ansible-playbook flightctl.dr.dr_backup"
t0=$(now)
playbook backup flightctl.dr.dr_backup
t1=$(now)
report "$logs/backup.log"
# The controller keeps copies per estate: the sandbox's host is "sandbox".
archive=$(ls -1 "$backups"/sandbox/flightctl-backup-*.tar.gz | tail -n 1)
echo "  checksum file: $(cat "$archive.sha256")"
(cd "$(dirname "$archive")" && sha256sum -c "$(basename "$archive").sha256" | sed 's/^/  sha256sum -c: /')
echo "  backup took $(took "$t0" "$t1")"

say "Disaster: database dropped, PKI deleted, KV flushed"
pki_files=$(find "$FLIGHTCTL_DR_PKI_DIR" -type f | wc -l)
psql -h "$SANDBOX_DB_SOCKET_DIR" -p "$FLIGHTCTL_DR_DB_PORT" -U postgres -d postgres -qX \
  -c "DROP DATABASE $FLIGHTCTL_DR_DB_NAME WITH (FORCE)"
echo "  dropped database $FLIGHTCTL_DR_DB_NAME"
rm -rf "$FLIGHTCTL_DR_PKI_DIR"
echo "  deleted $FLIGHTCTL_DR_PKI_DIR ($pki_files files)"
REDISCLI_AUTH=$FLIGHTCTL_DR_KV_PASSWORD redis-cli --no-auth-warning -h "$FLIGHTCTL_DR_KV_HOST" -p "$FLIGHTCTL_DR_KV_PORT" FLUSHALL >/dev/null
echo "  flushed the KV store"
during=$(status)
echo "  database reachable: $(jq .db_reachable <<<"$during"); KV keys: $(jq .kv_keys <<<"$during")"

say "Restore: ansible-playbook flightctl.dr.dr_restore (newest verified archive)"
t0=$(now)
playbook restore flightctl.dr.dr_restore -e "flightctl_dr_db_access=$restore_db_access"
t1=$(now)
report "$logs/restore.log"
echo "  restore took $(took "$t0" "$t1")"

say "After the restore"
after=$(status)
echo "  devices by status before: $(counts <<<"$before")"
echo "  devices by status after:  $(counts <<<"$after")"
echo "  KV keys: $(jq .kv_keys <<<"$after") (one awaiting-reconnect key per device to prepare)"
echo "  units: $(jq -r '.units | to_entries | map("\(.key | sub("\\.service$"; ""))=\(.value)") | join(", ")' <<<"$after")"
echo "  PKI files: $(find "$FLIGHTCTL_DR_PKI_DIR" -type f | wc -l) (were $pki_files)"
if [ "$(jq .up <<<"$after")" != true ]; then
  echo "demo: the estate is not fully up after the restore" >&2
  exit 1
fi
echo
echo "Devices report their real state when they reconnect; any that turn ConflictPaused"
echo "need review, then: flightctl resume device NAME"
