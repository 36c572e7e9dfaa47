#!/usr/bin/env bash
# Checks the collection as a reviewer gets it: extracts the built tarball (dist/) into a
# fresh ansible_collections/flightctl/dr and runs, with only what the tarball ships,
# ansible-doc --metadata-dump, ansible-lint (its .ansible-lint: production profile),
# yamllint (its .yamllint) and ansible-test sanity (its tests/sanity ignore file).
#
# usage: scripts/tarball-check.sh TARBALL
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
tarball=$(cd "$(dirname "$1")" && pwd)/$(basename "$1")
work=$(mktemp -d /tmp/flightctl-dr-tarball.XXXXXX)
trap 'rm -rf "$work"' EXIT
dir=$work/ansible_collections/flightctl/dr
mkdir -p "$dir"
tar -C "$dir" -xzf "$tarball"
export ANSIBLE_COLLECTIONS_PATH=$work ANSIBLE_NOCOLOR=1
for f in .ansible-lint .yamllint tests/sanity/ignore-2.14.txt; do
  [ -f "$dir/$f" ] || { echo "tarball-check: $tarball does not ship $f" >&2; exit 1; }
done
[ -z "$(find "$dir" -name '*.go' -print -quit)" ] || { echo "tarball-check: $tarball ships Go sources" >&2; exit 1; }

cd "$dir"
# module_defaults: group/flightctl.dr.all must reach every module.
for doc in plugins/modules/*.yml; do
  m=$(basename "$doc" .yml)
  grep -qx "    - $m" meta/runtime.yml || { echo "tarball-check: meta/runtime.yml action_groups.all lacks $m" >&2; exit 1; }
done
ansible-doc --metadata-dump flightctl.dr >/dev/null || { echo "tarball-check: ansible-doc --metadata-dump flightctl.dr failed" >&2; exit 1; }
# ansible-doc lists exactly the documented modules (the per-architecture binaries live in
# plugins/module_binaries/, where no module is looked for).
listed=$(ansible-doc -t module -l flightctl.dr | awk '{print $1}' | sort)
documented=$(for doc in plugins/modules/*.yml; do echo "flightctl.dr.$(basename "$doc" .yml)"; done | sort)
[ "$listed" = "$documented" ] || { echo "tarball-check: ansible-doc -l flightctl.dr lists" $listed "but the documented modules are" $documented >&2; exit 1; }
echo "tarball-check: ansible-doc -l lists exactly the documented modules: ok" >&2
echo "tarball-check: ansible-doc --metadata-dump: ok" >&2
ansible-lint --nocolor >&2 || { echo "tarball-check: ansible-lint (production profile) failed on the tarball's files" >&2; exit 1; }
echo "tarball-check: ansible-lint: ok" >&2
yamllint -s . >&2 || { echo "tarball-check: yamllint failed on the tarball's files" >&2; exit 1; }
echo "tarball-check: yamllint: ok" >&2
bash "$repo/scripts/ansible-sanity.sh" "$dir" >&2
echo "tarball-check: ansible-test sanity: ok" >&2
