# Sourced by the one-estate integration scripts (trust.sh, encryption.sh) after they set
# suite (their name, which also names $work: build/<suite>, or <SUITE>_WORK) and prefix (the
# sandbox's container prefix). Starts one sandbox estate, site-a, stopped whatever happens,
# writes its inventory, and gives fail, ok, play LOG ARGS... (ansible-playbook with the
# controller's backup directory, output in $work/logs/LOG.log) and state NAME (the server's
# state, kept as $work/state/site-a.NAME.json).
# shellcheck shell=bash
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$repo"
export PATH=/usr/local/go/bin:$PATH
export ANSIBLE_COLLECTIONS_PATH=${ANSIBLE_COLLECTIONS_PATH:-$repo/build/installed}
export ANSIBLE_NOCOLOR=1 ANSIBLE_RETRY_FILES_ENABLED=0 ANSIBLE_HOST_KEY_CHECKING=0
here=$repo/tests/integration/fleet
: "${suite:?set suite before sourcing onesite.sh}" "${prefix:?set prefix before sourcing onesite.sh}"
suite_env=${suite^^}
work_var=${suite_env}_WORK sandbox_var=${suite_env}_SANDBOX
work=${!work_var:-$repo/build/$suite}
sandbox=${!sandbox_var:-$repo/build/sandbox}

fail() { echo "$suite: FAIL: $*" >&2; exit 1; }
ok() { echo "$suite: ok: $*" >&2; }

[ -x "$sandbox" ] || go build -o "$sandbox" ./hack/sandbox
down() {
  [ -f "$work/site-a/sandbox.json" ] && { "$sandbox" down --dir "$work/site-a" >/dev/null 2>&1 || echo "$suite: sandbox down failed" >&2; }
  return 0
}
down
rm -rf "$work"
mkdir -p "$work/controller" "$work/state" "$work/logs" "$work/keys"
trap down EXIT
"$sandbox" up --dir "$work/site-a" --prefix "$prefix" --devices 5 >&2
python3 "$here/inventory.py" "$work/inventory.yml" site-a="$work/site-a"
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
state() { play "state-$1" -e "fleet_state_dir=$work/state" "$here/state.yml" || fail "reading the server's state ($work/logs/state-$1.log)"; cp "$work/state/site-a.json" "$work/state/site-a.$1.json"; }
