#!/usr/bin/env bash
# The whole job on this machine: a sandbox Flight Control estate is backed up with
# dr-backup, destroyed (database dropped, PKI deleted, KV flushed) and brought back with
# dr-restore, both run by FQCN from the installed collection. Prints what was saved, what
# was restored, the device counts by status before and after, and the timings. The
# sandbox is stopped at the end, whatever happens.
#
# usage: scripts/demo.sh            (make demo)
set -euo pipefail

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

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
now() { date +%s.%N; }
took() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f s", b - a }'; }

say "Installing what is missing"
bash scripts/install-deps.sh

say "Building and installing the collection"
mkdir -p "$repo/build"
make --no-print-directory collection-install >"$work.build.log" 2>&1 || { cat "$work.build.log"; exit 1; }
tail -n 3 "$work.build.log" | sed 's/^/  /'
export ANSIBLE_COLLECTIONS_PATH=$repo/build/installed
export ANSIBLE_NOCOLOR=1 ANSIBLE_RETRY_FILES_ENABLED=0

go build -o "$repo/build/sandbox" ./hack/sandbox
stop_sandbox() {
  if [ -f "$sandbox/sandbox.json" ]; then
    "$repo/build/sandbox" down --dir "$sandbox" >/dev/null 2>&1 || echo "demo: stopping the sandbox failed; run: build/sandbox down --dir $sandbox" >&2
    echo "  sandbox stopped"
  fi
}
if [ -f "$sandbox/sandbox.json" ]; then stop_sandbox; fi
rm -rf "$work"
mkdir -p "$work" "$logs"
trap 'say "Stopping the sandbox"; stop_sandbox' EXIT

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

playbook() {
  local name=$1
  shift
  ansible-playbook -i "$sandbox/inventory.yml" \
    -e "flightctl_dr_backup_dir=$backups" \
    -e "flightctl_dr_backup_remote_dir=$sandbox/server-backups" \
    -e "flightctl_dr_restore_remote_dir=$sandbox/restore" \
    -e "flightctl_dr_state_dir=$sandbox/dr-state" \
    "$@" >"$logs/$name.log" 2>&1 || { cat "$logs/$name.log"; echo "demo: $name failed (log: $logs/$name.log)" >&2; return 1; }
}
# The lines of the role's report (a debug msg list) from a playbook log.
report() { sed -n '/"msg": \[/,/^ *\]/p' "$1" | sed -e '1d' -e '$d' -e 's/^ *"//' -e 's/",\{0,1\}$//' -e 's/^/  /'; }

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
psql -h "$FLIGHTCTL_DR_DB_SOCKET_DIR" -p "$FLIGHTCTL_DR_DB_PORT" -U postgres -d postgres -qX \
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
