# shellcheck shell=bash
# shellcheck disable=SC2154  # repo, work, sandbox, backups and logs come from the sourcing script
# What scripts/demo.sh and scripts/demo-kubernetes.sh share, sourced by both after they set
# repo (the checkout), work (the demo's directory, emptied first), sandbox, backups and logs.

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
now() { date +%s.%N; }
took() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f s", b - a }'; }

stop_sandbox() {
  if [ -f "$sandbox/sandbox.json" ]; then
    "$repo/build/sandbox" down --dir "$sandbox" >/dev/null 2>&1 || echo "demo: stopping the sandbox failed; run: build/sandbox down --dir $sandbox" >&2
    echo "  sandbox stopped"
  fi
}

# demo_prepare installs what is missing, builds and installs the collection, builds the
# sandbox program, stops a sandbox an earlier run left, empties the demo's directory and
# makes the sandbox stop when the demo ends, whatever happens.
demo_prepare() {
  say "Installing what is missing"
  bash "$repo/scripts/install-deps.sh"

  say "Building and installing the collection"
  mkdir -p "$repo/build"
  make -C "$repo" --no-print-directory collection-install >"$work.build.log" 2>&1 || { cat "$work.build.log"; exit 1; }
  tail -n 3 "$work.build.log" | sed 's/^/  /'
  export ANSIBLE_COLLECTIONS_PATH=$repo/build/installed
  export ANSIBLE_NOCOLOR=1 ANSIBLE_RETRY_FILES_ENABLED=0

  (cd "$repo" && go build -o "$repo/build/sandbox" ./hack/sandbox)
  if [ -f "$sandbox/sandbox.json" ]; then stop_sandbox; fi
  rm -rf "$work"
  mkdir -p "$work" "$logs"
  trap 'say "Stopping the sandbox"; stop_sandbox' EXIT
}

# playbook NAME ARGS... runs ansible-playbook on the sandbox's inventory with the demo's
# directories, its output in $logs/NAME.log (shown when it fails).
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

# report LOG prints the lines of the role's report (a debug msg list) from a playbook log.
report() { sed -n '/"msg": \[/,/^ *\]/p' "$1" | sed -e '1d' -e '$d' -e 's/^ *"//' -e 's/",\{0,1\}$//' -e 's/^/  /'; }
