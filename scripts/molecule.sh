#!/usr/bin/env bash
# Runs a molecule scenario's playbooks with ansible-playbook, in the order of
# `molecule test` (molecule cannot be installed here): cleanup, destroy, syntax, create,
# prepare, converge, idempotence (converge again: the recap must show changed=0),
# side_effect, verify, cleanup, destroy. Destroy also runs when a step fails.
#
# usage: scripts/molecule.sh [scenario]     (default podman_host)
# The collection is taken from ANSIBLE_COLLECTIONS_PATH (make molecule installs it into
# build/installed first).
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
scenario=${1:-podman_host}
scenario_dir=$repo/molecule/$scenario
[ -f "$scenario_dir/molecule.yml" ] || { echo "molecule: no scenario $scenario_dir" >&2; exit 2; }

export MOLECULE_PROJECT_DIRECTORY=$repo
export MOLECULE_SCENARIO_NAME=$scenario
export MOLECULE_SCENARIO_DIRECTORY=$scenario_dir
export MOLECULE_EPHEMERAL_DIRECTORY=$repo/build/molecule/$scenario
# shellcheck source=scripts/checkout-tag.sh
. "$repo/scripts/checkout-tag.sh"
# The scenario's sandbox names its containers with it (vars/main.yml: sandbox_prefix).
export FLIGHTCTL_DR_CHECKOUT_TAG=$checkout_tag
export ANSIBLE_COLLECTIONS_PATH=${ANSIBLE_COLLECTIONS_PATH:-$repo/build/installed}
export ANSIBLE_FORCE_COLOR=${ANSIBLE_FORCE_COLOR:-0}
export ANSIBLE_NOCOLOR=1
export ANSIBLE_RETRY_FILES_ENABLED=0
export PATH=/usr/local/go/bin:$PATH
instance_config=$MOLECULE_EPHEMERAL_DIRECTORY/instance_config.yml

# The inventory molecule would write: the platform in its groups, the scenario's
# host_vars, and the link to the scenario's inventory script (which reads the inventory
# the sandbox writes, once create has started it).
inventory=$MOLECULE_EPHEMERAL_DIRECTORY/inventory
mkdir -p "$inventory"
cat > "$inventory/ansible_inventory.yml" <<'EOF'
---
all:
  hosts:
    sandbox:
      ansible_connection: local
      ansible_python_interpreter: /usr/bin/python3
  children:
    flightctl_servers:
      hosts:
        sandbox: {}
EOF
ln -sfn "$scenario_dir/inventory/sandbox.py" "$inventory/hosts"

log=$MOLECULE_EPHEMERAL_DIRECTORY/logs
mkdir -p "$log"

step() {
  local name=$1 playbook=$2
  shift 2
  echo "molecule: --> $scenario $name ($playbook)" >&2
  ansible-playbook -i "$inventory" -e "molecule_instance_config=$instance_config" \
    "$@" "$scenario_dir/$playbook" 2>&1 | tee "$log/$name.log"
  return "${PIPESTATUS[0]}"
}

destroy() {
  step destroy destroy.yml >/dev/null || echo "molecule: destroy failed; see $log/destroy.log" >&2
}

step cleanup cleanup.yml >/dev/null
destroy
trap destroy EXIT

for p in create prepare converge side_effect verify cleanup destroy; do
  step "syntax-$p" "$p.yml" --syntax-check >/dev/null
done
step create create.yml
step prepare prepare.yml
step converge converge.yml

step idempotence converge.yml
# The recap line of every host must say changed=0.
if ! grep -E '^[^ ]+ +: ok=' "$log/idempotence.log" | grep -qv 'changed=0'; then
  echo "molecule: idempotence: ok (changed=0)" >&2
else
  echo "molecule: idempotence: converge changed something on its second run:" >&2
  grep -E '^(changed|[^ ]+ +: ok=)' "$log/idempotence.log" >&2 || true
  grep -B1 -E '^changed:' "$log/idempotence.log" >&2 || true
  exit 1
fi

step side_effect side_effect.yml
step verify verify.yml
step cleanup cleanup.yml
trap - EXIT
destroy
echo "molecule: $scenario passed" >&2
