#!/usr/bin/env bash
# The roles on a Kubernetes estate: starts the Kubernetes form of the sandbox (a real
# kube-apiserver and etcd, the exec node, PostgreSQL and Redis), runs dr-backup.yml (the
# installed collection's copy, flightctl.dr.dr_backup) against its inventory, once with the
# inventory host reached over SSH at an address nothing answers on (the modules must run on
# the controller) and the database dumped through pods/exec, once with db_access direct;
# checks the controller's copies; and stops the sandbox, whatever happens.
#
# usage: tests/integration/kubernetes.sh
set -euo pipefail

repo=$(cd "$(dirname "$0")/../.." && pwd)
cd "$repo"
export PATH=/usr/local/go/bin:$PATH
export ANSIBLE_COLLECTIONS_PATH=${ANSIBLE_COLLECTIONS_PATH:-$repo/build/installed}
export ANSIBLE_NOCOLOR=1 ANSIBLE_RETRY_FILES_ENABLED=0

work=$repo/build/itest-kubernetes
sandbox=$repo/build/sandbox
go build -o "$sandbox" ./hack/sandbox
if [ -f "$work/sandbox/sandbox.json" ]; then "$sandbox" down --dir "$work/sandbox" >/dev/null 2>&1 || true; fi
rm -rf "$work"
mkdir -p "$work"
trap '"$sandbox" down --dir "$work/sandbox" >/dev/null 2>&1 || echo "kubernetes integration: sandbox down failed" >&2' EXIT
"$sandbox" up --kubernetes --dir "$work/sandbox" --devices 12 >&2

inventory=$work/sandbox/inventory.yml
# The estate's host as an inventory would name a cluster: an SSH host nobody answers for.
cat > "$work/unreachable.yml" <<'INV'
all:
  children:
    flightctl_servers:
      hosts:
        sandbox:
          ansible_connection: ssh
          ansible_host: 192.0.2.1
          ansible_ssh_common_args: -o ConnectTimeout=2
INV
common=(-e "flightctl_dr_backup_dir=$work/controller" -e "flightctl_dr_backup_remote_dir=$work/server")

echo "kubernetes integration: dr-backup.yml, pods/exec, modules on the controller" >&2
ansible-playbook -i "$inventory" -i "$work/unreachable.yml" "${common[@]}" flightctl.dr.dr_backup

echo "kubernetes integration: dr-backup.yml, db_access direct" >&2
# 127.0.0.1 is db_host's default, which with direct access means the database Service.
ansible-playbook -i "$inventory" "${common[@]}" -e flightctl_dr_db_access=direct -e flightctl_dr_db_host=localhost \
  flightctl.dr.dr_backup

ansible-playbook -i "$inventory" -e "itest_dir=$work" tests/integration/kubernetes/check.yml

echo "kubernetes integration: dr-restore.yml, the newest archive onto the live estate" >&2
ansible-playbook -i "$inventory" -e "flightctl_dr_backup_dir=$work/controller" \
  -e "flightctl_dr_restore_remote_dir=$work/restore-remote" -e "flightctl_dr_state_dir=$work/dr-state" flightctl.dr.dr_restore
echo "kubernetes integration: ok" >&2
