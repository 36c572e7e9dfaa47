#!/usr/bin/env bash
# Start, check or stop the Flight Control sandbox estate on this machine.
#   scripts/sandbox.sh up DIR [--devices N] [--version V] [--prefix P] [--no-podman]
#   scripts/sandbox.sh status DIR
#   scripts/sandbox.sh down DIR
# After "up", ". DIR/sandbox.env" sets the environment and DIR/inventory.yml is an
# Ansible inventory for the sandbox.
set -euo pipefail
cmd="${1:-}"; dir="${2:-}"
if [ -z "$cmd" ] || [ -z "$dir" ]; then
  sed -n '2,7p' "$0" >&2
  exit 2
fi
shift 2
cd "$(dirname "$0")/.."
export PATH="/usr/local/go/bin:$PATH"
exec go run ./hack/sandbox "$cmd" --dir "$dir" "$@"
