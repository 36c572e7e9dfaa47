# Sourced by the integration scripts (fleet.sh, trust.sh, encryption.sh) after they set
# suite (their name, which also names $work: build/<suite>, or <SUITE>_WORK) and estates
# ("NAME:PREFIX:DEVICES ...": one sandbox estate each, with its container prefix (followed by
# the checkout tag of scripts/checkout-tag.sh) and device count). Starts the sandboxes side
# by side (distinct ports, prefixes, systemd managers and directories), stopped whatever
# happens, writes their inventory, and gives fail, ok, play LOG ARGS... (ansible-playbook
# with the controller's backup directory, output in $work/logs/LOG.log), state NAME (each
# server's state, kept as $work/state/<estate>.NAME.json) and recap HOST LOG (the host's
# line of the play recap).
# shellcheck shell=bash
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$repo"
export PATH=/usr/local/go/bin:$PATH
export ANSIBLE_COLLECTIONS_PATH=${ANSIBLE_COLLECTIONS_PATH:-$repo/build/installed}
export ANSIBLE_NOCOLOR=1 ANSIBLE_RETRY_FILES_ENABLED=0 ANSIBLE_HOST_KEY_CHECKING=0
here=$repo/tests/integration/fleet
# shellcheck source=scripts/checkout-tag.sh
. "$repo/scripts/checkout-tag.sh"
: "${suite:?set suite before sourcing estates.sh}" "${estates:?set estates before sourcing estates.sh}"
suite_env=${suite^^}
work_var=${suite_env}_WORK sandbox_var=${suite_env}_SANDBOX
work=${!work_var:-$repo/build/$suite}
sandbox=${!sandbox_var:-$repo/build/sandbox}

fail() { echo "$suite: FAIL: $*" >&2; exit 1; }
ok() { echo "$suite: ok: $*" >&2; }

[ -x "$sandbox" ] || go build -o "$sandbox" ./hack/sandbox
names=()
for e in $estates; do names+=("${e%%:*}"); done
down() {
  for s in "${names[@]}"; do
    [ -f "$work/$s/sandbox.json" ] && { "$sandbox" down --dir "$work/$s" >/dev/null 2>&1 || echo "$suite: sandbox $s down failed" >&2; }
  done
  return 0
}
down
rm -rf "$work"
mkdir -p "$work/controller" "$work/state" "$work/logs" "$work/keys"
trap down EXIT
hosts=()
for e in $estates; do
  IFS=: read -r name prefix devices <<<"$e"
  "$sandbox" up --dir "$work/$name" --prefix "$prefix$checkout_tag-" --devices "$devices" >&2
  hosts+=("$name=$work/$name")
done
python3 "$here/inventory.py" "$work/inventory.yml" "${hosts[@]}"
inv=$work/inventory.yml
controller=$work/controller

play() {
  local log=$1
  shift
  set +e
  ansible-playbook -i "$inv" -e "flightctl_dr_backup_dir=$controller" "$@" >"$work/logs/$log.log" 2>&1
  local rc=$?
  set -e
  return $rc
}
state() {
  play "state-$1" -e "fleet_state_dir=$work/state" "$here/state.yml" || fail "reading the servers' state ($work/logs/state-$1.log)"
  for s in "${names[@]}"; do cp "$work/state/$s.json" "$work/state/$s.$1.json"; done
}
recap() { grep -E "^$1 +: ok=" "$work/logs/$2.log"; }
