#!/usr/bin/env bash
# The whole job on the Kubernetes form of the sandbox (make demo ESTATE=kubernetes): a Helm
# install of Flight Control in a test cluster on this machine (a real kube-apiserver and
# etcd, the exec node, PostgreSQL and Redis) is backed up with dr-backup through the API,
# destroyed (database dropped, a PKI Secret deleted, KV flushed) and brought back with
# dr-restore, both run by FQCN from the installed collection. The sandbox is stopped at the
# end, whatever happens.
#
# usage: scripts/demo-kubernetes.sh     (make demo ESTATE=kubernetes)
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
export PATH=/usr/local/go/bin:$PATH

work=$repo/build/demo-kubernetes
sandbox=$work/sandbox
backups=$work/backups
logs=$work/logs

# shellcheck source=scripts/demo-common.sh
. "$repo/scripts/demo-common.sh"
demo_prepare
export ANSIBLE_LOCALHOST_WARNING=0

say "Starting a test cluster holding a Helm install of Flight Control"
t0=$(now)
"$repo/build/sandbox" up --kubernetes --dir "$sandbox" | sed 's/^/  /'
t1=$(now)
echo "  up in $(took "$t0" "$t1")"

# shellcheck disable=SC1091
. "$sandbox/sandbox.env"
# status exits non-zero while something is down; its JSON says what.
status() { "$repo/build/sandbox" status --dir "$sandbox" 2>/dev/null || true; }
counts() { jq -r '(.devices_by_status // {}) | to_entries | map("\(.key)=\(.value)") | join(", ")' <<<"$1"; }
deployments() { jq -r '.kubernetes.deployments | to_entries | map("\(.key | sub("^[^/]*/"; ""))=\(.value)") | join(", ")' <<<"$1"; }
before=$(status)
echo "  API server $(jq -r .kubernetes.api_server <<<"$before"), node ready: $(jq .kubernetes.node_ready <<<"$before"), database pod $(jq -r .kubernetes.db_pod <<<"$before")"
echo "  devices by status: $(counts "$before")"
echo "  Deployments (replicas): $(deployments "$before")"
echo "  KV keys: $(jq .kv_keys <<<"$before")"

say "Backup: ansible-playbook flightctl.dr.dr_backup (through the Kubernetes API)"
t0=$(now)
playbook backup flightctl.dr.dr_backup
t1=$(now)
report "$logs/backup.log"
archives=("$backups"/sandbox/flightctl-backup-*.tar.gz)
archive=${archives[-1]}
(cd "$(dirname "$archive")" && sha256sum -c "$(basename "$archive").sha256" | sed 's/^/  sha256sum -c: /')
echo "  backup took $(took "$t0" "$t1")"

say "Disaster: database dropped, a PKI Secret deleted, KV flushed"
psql -h "$SANDBOX_DB_SOCKET_DIR" -p "$FLIGHTCTL_DR_DB_PORT" -U postgres -d postgres -qX \
  -c "DROP DATABASE $FLIGHTCTL_DR_DB_NAME WITH (FORCE)"
echo "  dropped database $FLIGHTCTL_DR_DB_NAME"
ansible localhost -c local -m kubernetes.core.k8s \
  -a "state=absent kind=Secret name=flightctl-ca namespace=$FLIGHTCTL_DR_NAMESPACE kubeconfig=$FLIGHTCTL_DR_KUBECONFIG" >"$logs/disaster.log" 2>&1 \
  || { cat "$logs/disaster.log"; exit 1; }
echo "  deleted Secret $FLIGHTCTL_DR_NAMESPACE/flightctl-ca"
REDISCLI_AUTH=$FLIGHTCTL_DR_KV_PASSWORD redis-cli --no-auth-warning -h "$FLIGHTCTL_DR_KV_HOST" -p "$FLIGHTCTL_DR_KV_PORT" FLUSHALL >/dev/null
echo "  flushed the KV store"

say "Restore: ansible-playbook flightctl.dr.dr_restore (newest verified archive)"
t0=$(now)
playbook restore flightctl.dr.dr_restore
t1=$(now)
report "$logs/restore.log"
echo "  restore took $(took "$t0" "$t1")"

say "After the restore"
after=$(status)
echo "  devices by status before: $(counts "$before")"
echo "  devices by status after:  $(counts "$after")"
echo "  Deployments (replicas) before: $(deployments "$before")"
echo "  Deployments (replicas) after:  $(deployments "$after")"
echo "  KV keys: $(jq .kv_keys <<<"$after") (one awaiting-reconnect key per device to prepare)"
if [ "$(jq .up <<<"$after")" != true ]; then
  echo "demo: the estate is not fully up after the restore" >&2
  exit 1
fi
